//! What the user commands keep between runs, in the user's configuration
//! directory (`$XDG_CONFIG_HOME/capsule`, else `~/.config/capsule`, mode
//! 0700): the signed-in session (`credentials.json`, mode 0600) and which
//! project each directory is linked to (`links.json`). `CAPSULE_TOKEN`
//! (an API token, for CI) takes the session's place.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow};
use capsule::proto::auth::v1::{RefreshRequest, TokenPair, auth_service_client::AuthServiceClient};
use serde::{Deserialize, Serialize};

/// Where the gateway's gRPC port is, unless `--api`, `CAPSULE_API_URL` or
/// the session says otherwise: `capsule dev`'s.
pub const DEFAULT_API: &str = "http://localhost:50051";

/// The signed-in session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub api: String,
    pub email: String,
    pub access_token: String,
    /// Seconds since the epoch.
    pub access_expires: i64,
    pub refresh_token: String,
}

/// A directory's project.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub project_id: String,
    pub name: String,
}

pub fn config_dir() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| anyhow!("HOME is not set"))?).join(".config"),
    };
    Ok(base.join("capsule"))
}

/// Writes `value` as JSON to `name` in the configuration directory, mode
/// 0600, replacing it whole.
fn write(name: &str, value: &impl Serialize) -> anyhow::Result<()> {
    let dir = config_dir()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(name);
    // A file of its own (mode 0600), renamed into place whole: two
    // commands saving at once never mix their halves.
    let mut partial =
        tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    partial.write_all(&serde_json::to_vec_pretty(value)?)?;
    partial.as_file().sync_all()?;
    partial
        .persist(&path)
        .map_err(|err| anyhow!("cannot write {}: {}", path.display(), err.error))?;
    Ok(())
}

fn read<T: for<'de> Deserialize<'de>>(name: &str) -> anyhow::Result<Option<T>> {
    let path = config_dir()?.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged: remove it", path.display())
            })?))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

impl Credentials {
    pub fn load() -> anyhow::Result<Option<Self>> {
        read("credentials.json")
    }

    pub fn save(&self) -> anyhow::Result<()> {
        write("credentials.json", self)
    }

    pub fn forget() -> anyhow::Result<bool> {
        match std::fs::remove_file(config_dir()?.join("credentials.json")) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    pub fn from_pair(api: &str, email: &str, pair: TokenPair) -> Self {
        Self {
            api: api.to_owned(),
            email: email.to_owned(),
            access_token: pair.access_token,
            access_expires: pair.access_token_expire_time.map_or(0, |time| time.seconds),
            refresh_token: pair.refresh_token,
        }
    }

    /// The session with an access token good for another minute: renewed
    /// with the refresh token (and saved) when it is not.
    pub async fn fresh(mut self, channel: capsule::trace::TracedChannel) -> anyhow::Result<Self> {
        if self.access_expires > chrono::Utc::now().timestamp() + 60 {
            return Ok(self);
        }
        let renewed = AuthServiceClient::new(channel)
            .refresh(RefreshRequest {
                refresh_token: self.refresh_token.clone(),
            })
            .await
            .map_err(|_| anyhow!("the session has ended: run `capsule login`"))?
            .into_inner();
        let pair = renewed
            .tokens
            .ok_or_else(|| anyhow!("the session has ended: run `capsule login`"))?;
        self = Self::from_pair(&self.api, &self.email, pair);
        self.save()?;
        Ok(self)
    }
}

/// Directories (absolute) and their projects.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Links(BTreeMap<PathBuf, Link>);

impl Links {
    pub fn load() -> anyhow::Result<Self> {
        Ok(read("links.json")?.unwrap_or_default())
    }

    /// The link of `dir` or of its nearest linked ancestor.
    pub fn find(&self, dir: &Path) -> Option<&Link> {
        self.linked_dir(dir).and_then(|linked| self.0.get(&linked))
    }

    /// The directory whose link `dir` uses: itself or its nearest linked
    /// ancestor.
    pub fn linked_dir(&self, dir: &Path) -> Option<PathBuf> {
        dir.ancestors()
            .find(|dir| self.0.contains_key(*dir))
            .map(Path::to_path_buf)
    }

    pub fn set(mut self, dir: PathBuf, link: Option<Link>) -> anyhow::Result<()> {
        match link {
            Some(link) => self.0.insert(dir, link),
            None => self.0.remove(&dir),
        };
        write("links.json", &self)
    }
}
