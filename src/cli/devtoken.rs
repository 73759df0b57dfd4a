//! The token and URL files `skyclaw dev` keeps in its data directory, and how
//! client commands find them, so that talking to a local dev cluster needs no
//! flags.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The dev cluster's data directory, relative to where `skyclaw dev` runs.
pub const DEFAULT_DEV_DIR: &str = ".skyclaw";
/// The cluster token, in a dev data directory.
const TOKEN_FILE: &str = "token";
/// The coordinator's URL, in a dev data directory.
const URL_FILE: &str = "url";
/// Random bytes in a generated token: 256 bits cannot be guessed.
const TOKEN_BYTES: usize = 32;
/// Only the owner may read the token: it opens every private route.
const TOKEN_FILE_MODE: u32 = 0o600;

/// The token saved in `dir`, or a new random one saved there (owner-only).
pub fn load_or_create_token(dir: &Path) -> Result<String> {
    let path = dir.join(TOKEN_FILE);
    if let Some(token) = read_token(&path)? {
        return Ok(token);
    }
    let token = hex::encode(rand::random::<[u8; TOKEN_BYTES]>());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(TOKEN_FILE_MODE)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Records where the dev coordinator listens, for client commands to find.
/// Written aside and renamed, so a reader never sees half a URL.
pub fn write_url(dir: &Path, url: &str) -> Result<()> {
    let path = dir.join(URL_FILE);
    let tmp = dir.join(format!("{URL_FILE}.tmp"));
    fs::write(&tmp, format!("{url}\n"))
        .and_then(|()| fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Removes the URL file of a `dev` that stops, unless another `dev` has
/// written its own URL there since: client commands should not be sent to a
/// port no one serves.
pub fn remove_url(dir: &Path, url: &str) {
    let path = dir.join(URL_FILE);
    let ours = fs::read_to_string(&path).is_ok_and(|saved| normalize(&saved) == normalize(url));
    if ours && let Err(e) = fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the dev URL file");
    }
}

/// The path of the token file in a dev data directory, for messages.
pub fn token_path(dir: &Path) -> PathBuf {
    dir.join(TOKEN_FILE)
}

/// The path of the URL file in a dev data directory, for messages.
pub fn url_path(dir: &Path) -> PathBuf {
    dir.join(URL_FILE)
}

/// A `skyclaw dev` data directory with the URL its coordinator serves (or
/// served: a `dev` killed outright leaves its URL file behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCluster {
    pub dir: PathBuf,
    pub url: String,
}

impl DevCluster {
    /// The cluster token kept in the directory, if it can be read.
    pub fn token(&self) -> Option<String> {
        read_token(&self.dir.join(TOKEN_FILE)).ok().flatten()
    }

    /// Whether `url` names this dev coordinator.
    pub fn serves(&self, url: &str) -> bool {
        normalize(url) == self.url
    }

    /// The URL file, for messages.
    pub fn url_path(&self) -> PathBuf {
        url_path(&self.dir)
    }
}

/// The dev cluster client commands use: the one in `dev_dir` when given,
/// else the nearest `.skyclaw` in the current directory or its ancestors,
/// whose URL `accept` takes.
pub fn find(dev_dir: Option<&Path>, accept: impl Fn(&DevCluster) -> bool) -> Option<DevCluster> {
    match dev_dir {
        Some(dir) => read_cluster(dir).filter(&accept),
        None => search_upwards(&std::env::current_dir().ok()?, accept),
    }
}

fn search_upwards(start: &Path, accept: impl Fn(&DevCluster) -> bool) -> Option<DevCluster> {
    start
        .ancestors()
        .filter_map(|dir| read_cluster(&dir.join(DEFAULT_DEV_DIR)))
        .find(|cluster| accept(cluster))
}

/// The dev cluster whose URL file is in `dir`, if there is one.
fn read_cluster(dir: &Path) -> Option<DevCluster> {
    let saved = fs::read_to_string(dir.join(URL_FILE)).ok()?;
    let url = normalize(&saved);
    (!url.is_empty()).then(|| DevCluster {
        dir: dir.to_path_buf(),
        url: url.to_string(),
    })
}

fn read_token(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn normalize(url: &str) -> &str {
    url.trim().trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const URL: &str = "http://127.0.0.1:8787";

    fn dev_dir_with(root: &Path, url: &str) -> (PathBuf, String) {
        let dir = root.join(DEFAULT_DEV_DIR);
        fs::create_dir_all(&dir).unwrap();
        let token = load_or_create_token(&dir).unwrap();
        write_url(&dir, url).unwrap();
        (dir, token)
    }

    #[test]
    fn token_is_created_owner_only_and_reused() {
        let root = tempfile::tempdir().unwrap();
        let (dir, token) = dev_dir_with(root.path(), URL);
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        let mode = fs::metadata(token_path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, TOKEN_FILE_MODE);
        assert_eq!(load_or_create_token(&dir).unwrap(), token);
    }

    #[test]
    fn found_from_a_subdirectory_when_the_url_matches() {
        let root = tempfile::tempdir().unwrap();
        let (dir, token) = dev_dir_with(root.path(), URL);
        let nested = root.path().join("a/b");
        fs::create_dir_all(&nested).unwrap();
        let urls = ["http://other:1".to_string(), format!("{URL}/")];
        let found = search_upwards(&nested, |c| urls.iter().any(|u| c.serves(u))).unwrap();
        assert_eq!((found.dir, found.url.as_str()), (dir, URL));
        assert_eq!(
            search_upwards(&nested, |_| true).and_then(|c| c.token()),
            Some(token)
        );
        assert_eq!(
            search_upwards(&nested, |c| c.serves("http://other:1")),
            None
        );
    }

    #[test]
    fn explicit_dev_dir_is_used() {
        let root = tempfile::tempdir().unwrap();
        let (dir, token) = dev_dir_with(root.path(), URL);
        assert_eq!(
            find(Some(&dir), |_| true).and_then(|c| c.token()),
            Some(token)
        );
        assert_eq!(find(Some(root.path()), |_| true), None);
    }

    #[test]
    fn the_url_file_goes_only_if_it_is_ours() {
        let root = tempfile::tempdir().unwrap();
        let (dir, _) = dev_dir_with(root.path(), URL);
        remove_url(&dir, "http://127.0.0.1:9999");
        assert!(
            find(Some(&dir), |_| true).is_some(),
            "another dev's URL stays"
        );
        remove_url(&dir, URL);
        assert_eq!(find(Some(&dir), |_| true), None);
    }
}
