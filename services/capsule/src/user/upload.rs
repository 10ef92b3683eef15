//! `capsule up`: deploys a directory as it is on the user's machine,
//! without git. The files git would see (`.gitignore`, `.ignore` and
//! `.git/info/exclude` respected; `.git` itself left out) are packed as a
//! gzip-compressed tar, streamed to the deploy service in 256 KiB pieces
//! with the archive's digest, and followed like `capsule deploy`.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow, bail};
use capsule::proto::deploy::v1 as pb;
use clap::Args;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{
    api::{Api, Global},
    deploy::settle,
    show::status,
};

/// The largest archive sent; the deploy service has its own limit
/// (`DEPLOY_MAX_UPLOAD_MB`).
const MAX_BYTES: u64 = 512 * 1024 * 1024;
/// The size of each piece sent (a message of the gRPC default size).
const PIECE: usize = 256 * 1024;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The directory to deploy (default: this one).
    pub path: Option<PathBuf>,
    /// The environment (default: production).
    #[arg(long, short)]
    pub environment: Option<String>,
    /// Return once the deployment is queued instead of following it.
    #[arg(long)]
    pub detach: bool,
}

/// The archive being written: its bytes counted and hashed on the way.
struct Counted {
    file: std::fs::File,
    hash: Sha256,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hash.update(&buf[..written]);
        self.bytes += written as u64;
        if self.bytes > MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "the archive is over {} MiB: put what the build does not need in .gitignore",
                MAX_BYTES / (1024 * 1024)
            )));
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// What was packed.
struct Packed {
    archive: tempfile::NamedTempFile,
    digest: String,
    files: usize,
    bytes: u64,
}

/// Packs `root` as git would see it.
fn pack(root: &Path) -> anyhow::Result<Packed> {
    let archive = tempfile::NamedTempFile::new().context("cannot make a temporary file for the archive")?;
    let counted = Counted {
        file: archive.reopen()?,
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(counted, flate2::Compression::default()));
    // A link is sent as a link: it is resolved, if ever, in the sandbox.
    tar.follow_symlinks(false);
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    let mut files = 0;
    for entry in walker {
        let entry = entry?;
        let path = entry.path();
        let Ok(name) = path.strip_prefix(root) else { continue };
        if name.as_os_str().is_empty() {
            continue;
        }
        let Some(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            tar.append_dir(name, path)
        } else if kind.is_file() || kind.is_symlink() {
            files += 1;
            tar.append_path_with_name(path, name)
        } else {
            // Sockets, pipes and devices are nothing to deploy.
            continue;
        }
        .with_context(|| format!("cannot pack {}", path.display()))?;
    }
    let counted = tar.into_inner()?.finish()?;
    if files == 0 {
        bail!("{} holds no file to deploy (all ignored?)", root.display());
    }
    Ok(Packed {
        archive,
        digest: format!("sha256:{:x}", counted.hash.finalize()),
        files,
        bytes: counted.bytes,
    })
}

pub async fn up(global: &Global, args: UpArgs) -> anyhow::Result<()> {
    let api = Api::connect(global).await?;
    let project = api.project().await?;
    let root = match args.path {
        Some(path) => path,
        None => std::env::current_dir()?,
    };
    if !root.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let packing = root.clone();
    let packed = tokio::task::spawn_blocking(move || pack(&packing))
        .await
        .map_err(|err| anyhow!("packing stopped: {err}"))??;
    eprintln!(
        "Uploading {} ({} files, {:.1} MiB) to {} …",
        root.display(),
        packed.files,
        packed.bytes as f64 / (1024.0 * 1024.0),
        project.slug
    );
    let bar = match std::io::stderr().is_terminal() {
        true => indicatif::ProgressBar::new(packed.bytes),
        false => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let file = tokio::fs::File::from_std(packed.archive.reopen()?);
    let (first, counter) = (
        pb::UploadSourceRequest {
            project_id: project.id.clone(),
            environment: args.environment.unwrap_or_default(),
            source_digest: packed.digest.clone(),
            data: Vec::new(),
        },
        bar.clone(),
    );
    let pieces = tokio_util::io::ReaderStream::with_capacity(file, PIECE)
        .map(move |piece| {
            // A read that fails sends nothing more: the digest then does
            // not match and nothing is deployed.
            let data = piece.map(|bytes| bytes.to_vec()).unwrap_or_default();
            counter.inc(data.len() as u64);
            pb::UploadSourceRequest {
                data,
                ..Default::default()
            }
        })
        .take_while(|piece| std::future::ready(!piece.data.is_empty()));
    let stream = futures::stream::once(std::future::ready(first)).chain(pieces);
    let deployment = api
        .deploys()
        .upload_source(api.call(stream))
        .await
        .map_err(status)?
        .into_inner();
    bar.finish_and_clear();
    settle(&api, deployment, args.detach).await
}
