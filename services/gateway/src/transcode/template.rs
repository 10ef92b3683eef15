//! `google.api.http` path templates (https://google.aip.dev/127):
//! `/v1/projects/{project_id}/deployments`, `/v1/users/{user_id}:setRole`,
//! `/v1/projects/{project.id}`, `{name=shelves/*}`, `**`.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: one segment, not bound.
    Any,
    /// `**`: the rest, not bound.
    Rest,
    /// `{field}` or `{field=pattern}`: binds what `pattern` matches.
    Variable {
        field: String,
        pattern: Vec<Segment>,
    },
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
    verb: Option<String>,
    /// The template as written, for OpenAPI paths.
    pub text: String,
    /// The template with its variables unnamed.
    shape: String,
    /// How many path segments it matches, when that is fixed (no `**`).
    length: Option<usize>,
}

/// A request path split on `/` once, to be matched against every template
/// (still percent-encoded; `/` alone is no segment).
pub struct Split<'a>(Vec<&'a str>);

impl<'a> Split<'a> {
    /// `None` for a path that does not start with `/`.
    pub fn new(path: &'a str) -> Option<Self> {
        let path = path.strip_prefix('/')?;
        Some(Self(if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        }))
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let path = text
            .strip_prefix('/')
            .ok_or_else(|| format!("{text}: a template starts with /"))?;
        // The verb is after the last ':' outside braces.
        let mut depth = 0;
        let mut verb_at = None;
        for (index, c) in path.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(index),
                _ => {}
            }
        }
        let (body, verb) = match verb_at {
            Some(index) => (&path[..index], Some(path[index + 1..].to_owned())),
            None => (path, None),
        };
        if verb
            .as_deref()
            .is_some_and(|verb| verb.is_empty() || verb.contains('/'))
        {
            return Err(format!("{text}: a custom verb is one word after the last ':'"));
        }
        let segments = parse_segments(body)?;
        let mut template = Self {
            length: fixed_length(&segments),
            segments,
            verb,
            text: text.to_owned(),
            shape: String::new(),
        };
        template.shape = template.openapi_path_named(&vec![String::new(); template.fields().len()]);
        Ok(template)
    }

    pub fn has_verb(&self) -> bool {
        self.verb.is_some()
    }

    /// How many literal segments: more literals match first.
    pub fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// The bound field paths.
    pub fn fields(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Variable { field, .. } => Some(field.clone()),
                _ => None,
            })
            .collect()
    }

    /// The OpenAPI path (`/v1/projects/{project_id}`) with these names for the variables, in order (paths
    /// of the same shape must share parameter names in OpenAPI).
    pub fn openapi_path_named(&self, names: &[String]) -> String {
        let mut names = names.iter();
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::Any => path.push('*'),
                Segment::Rest => path.push_str("**"),
                Segment::Variable { field, .. } => {
                    path.push('{');
                    path.push_str(names.next().unwrap_or(field));
                    path.push('}');
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// The template with its variables unnamed: two templates of one shape
    /// match the same requests.
    pub fn shape(&self) -> &str {
        &self.shape
    }

    /// Matches a request path; returns the bound (field path, decoded
    /// value) pairs. A template with a custom verb matches when the last
    /// segment ends in `:verb`, and matches the path without it.
    pub fn matches(&self, path: &Split<'_>) -> Option<Vec<(String, String)>> {
        let parts = &path.0[..];
        let Some(verb) = &self.verb else {
            return self.matches_parts(parts);
        };
        let (last, init) = parts.split_last()?;
        let last = last.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        if init.is_empty() && last.is_empty() {
            return self.matches_parts(&[]);
        }
        let mut parts = init.to_vec();
        parts.push(last);
        self.matches_parts(&parts)
    }

    fn matches_parts(&self, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if self.length.is_some_and(|length| length != parts.len()) {
            return None;
        }
        let mut bound = Vec::new();
        let used = match_segments(&self.segments, parts, &mut bound)?;
        (used == parts.len()).then_some(bound)
    }
}

/// How many path segments `segments` match, when no `**` makes it vary.
fn fixed_length(segments: &[Segment]) -> Option<usize> {
    segments.iter().try_fold(0, |length, segment| match segment {
        Segment::Literal(_) | Segment::Any => Some(length + 1),
        Segment::Rest => None,
        Segment::Variable { pattern, .. } => Some(length + fixed_length(pattern)?),
    })
}

fn parse_segments(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or_else(|| format!("{text}: unclosed {{"))?;
            let inner = &after[..end];
            let (field, pattern) = match inner.split_once('=') {
                Some((field, pattern)) => (field, parse_segments(pattern)?),
                None => (inner, vec![Segment::Any]),
            };
            segments.push(Segment::Variable {
                field: field.to_owned(),
                pattern,
            });
            rest = &after[end + 1..];
        } else {
            let end = rest.find('/').unwrap_or(rest.len());
            let literal = &rest[..end];
            segments.push(match literal {
                "*" => Segment::Any,
                "**" => Segment::Rest,
                "" => return Err(format!("{text}: empty segment")),
                other => Segment::Literal(other.to_owned()),
            });
            rest = &rest[end..];
        }
        rest = rest.strip_prefix('/').unwrap_or(rest);
    }
    Ok(segments)
}

/// Matches `segments` against the start of `parts`; how many parts it used.
fn match_segments(segments: &[Segment], parts: &[&str], bound: &mut Vec<(String, String)>) -> Option<usize> {
    let mut used = 0;
    for segment in segments {
        match segment {
            Segment::Literal(literal) => {
                if parts.get(used)? != literal {
                    return None;
                }
                used += 1;
            }
            Segment::Any => {
                if parts.get(used)?.is_empty() {
                    return None;
                }
                used += 1;
            }
            Segment::Rest => used = parts.len(),
            Segment::Variable { field, pattern } => {
                let mut inner = Vec::new();
                let taken = match_segments(pattern, &parts[used..], &mut inner)?;
                if taken == 0 {
                    return None;
                }
                let raw = parts[used..used + taken].join("/");
                let value = percent_encoding::percent_decode_str(&raw)
                    .decode_utf8()
                    .ok()?
                    .into_owned();
                if value.is_empty() {
                    return None;
                }
                bound.push((field.clone(), value));
                used += taken;
            }
        }
    }
    Some(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Template {
        fn matches_path(&self, path: &str) -> Option<Vec<(String, String)>> {
            self.matches(&Split::new(path)?)
        }
    }

    #[test]
    fn templates_bind_variables_verbs_and_nested_fields() {
        let t = Template::parse("/v1/projects/{project_id}/deployments").unwrap();
        assert_eq!(
            t.matches_path("/v1/projects/abc/deployments"),
            Some(vec![("project_id".into(), "abc".into())])
        );
        assert_eq!(t.matches_path("/v1/projects/abc"), None);
        assert_eq!(t.matches_path("/v1/projects//deployments"), None);

        let verb = Template::parse("/v1/users/{user_id}:setRole").unwrap();
        assert_eq!(
            verb.matches_path("/v1/users/42:setRole"),
            Some(vec![("user_id".into(), "42".into())])
        );
        assert_eq!(verb.matches_path("/v1/users/42"), None);
        assert!(verb.has_verb());

        let plain = Template::parse("/v1/auth:login").unwrap();
        assert_eq!(plain.matches_path("/v1/auth:login"), Some(vec![]));
        assert_eq!(plain.matches_path("/v1/auth:logout"), None);

        let nested = Template::parse("/v1/projects/{project.id}").unwrap();
        assert_eq!(nested.fields(), ["project.id"]);
        assert_eq!(
            nested.matches_path("/v1/projects/a%20b"),
            Some(vec![("project.id".into(), "a b".into())])
        );
        let pattern = Template::parse("/v1/{name=shelves/*/books/**}").unwrap();
        assert_eq!(
            pattern.matches_path("/v1/shelves/1/books/2/3"),
            Some(vec![("name".into(), "shelves/1/books/2/3".into())])
        );
        assert_eq!(pattern.openapi_path_named(&pattern.fields()), "/v1/{name}");
        assert!(Template::parse("v1/x").is_err());
        assert!(Template::parse("/v1/x:").is_err());
        assert!(
            Template::parse("/v1/{name=a/b:c/d}").is_ok(),
            "a ':' inside braces is no verb"
        );
    }

    #[test]
    fn lengths_verbs_and_rests_are_matched_as_written() {
        let fixed = Template::parse("/v1/projects/{project_id}").unwrap();
        assert_eq!(fixed.matches_path("/v1/projects/a/b"), None, "one segment too many");
        assert_eq!(fixed.matches_path("/v1/projects"), None, "one too few");
        assert_eq!(
            fixed.matches_path("/v1/projects/a:cancel"),
            Some(vec![("project_id".into(), "a:cancel".into())]),
            "a template without a verb takes the colon as part of the value"
        );
        let verb = Template::parse("/v1/projects/{project_id}:cancel").unwrap();
        assert_eq!(verb.matches_path("/v1/projects/a:cancel/b"), None);
        assert_eq!(verb.matches_path("/v1/projects/a:cancelled"), None);
        assert_eq!(
            verb.matches_path("/v1/projects/:cancel"),
            None,
            "an empty value binds nothing"
        );
        let bare = Template::parse("/:ping").unwrap();
        assert_eq!(bare.matches_path("/:ping"), Some(vec![]));
        assert_eq!(bare.matches_path("/x:ping"), None);
        assert_eq!(bare.matches_path("/"), None);
        let rest = Template::parse("/v1/files/**").unwrap();
        assert_eq!(rest.matches_path("/v1/files/a/b/c"), Some(vec![]));
        assert_eq!(rest.matches_path("/v1/files"), Some(vec![]));
        let inner = Template::parse("/v1/{name=shelves/*}/books").unwrap();
        assert_eq!(
            inner.matches_path("/v1/shelves/1/books"),
            Some(vec![("name".into(), "shelves/1".into())])
        );
        assert_eq!(inner.matches_path("/v1/shelves/1/2/books"), None);
        assert_eq!(Split::new("v1/x").map(|_| ()), None, "a path starts with /");
    }
}
