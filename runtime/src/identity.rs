//! The host's id: made once, kept in `<data_dir>/host-id`, so that a restarted
//! host is the same host to the coordinators.

use std::path::Path;

use crate::HostError;

/// The file in the data directory that holds the id.
pub const HOST_ID_FILE: &str = "host-id";
/// Random bytes in a new id: 64 bits make a collision in one network unlikely.
const HOST_ID_RANDOM_BYTES: usize = 8;
/// Longest id accepted from the file; ids are path segments and log fields.
const MAX_HOST_ID_LEN: usize = 128;

/// Reads the host id from `data_dir`, or makes one and writes it there first.
pub(crate) fn load_or_create(data_dir: &Path) -> Result<String, HostError> {
    let path = data_dir.join(HOST_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(content) => {
            let id = content.trim();
            if !is_valid(id) {
                return Err(HostError::BadHostId {
                    path,
                    content: content.chars().take(MAX_HOST_ID_LEN).collect(),
                });
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_id();
            // Written under a temporary name and renamed, so a crash never
            // leaves a half-written id behind.
            let tmp = data_dir.join(format!("{HOST_ID_FILE}.tmp"));
            std::fs::create_dir_all(data_dir).map_err(io("cannot create", data_dir))?;
            std::fs::write(&tmp, format!("{id}\n")).map_err(io("cannot write", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io("cannot write", &path))?;
            Ok(id)
        }
        Err(source) => Err(HostError::DataDir {
            action: "cannot read",
            path,
            source,
        }),
    }
}

/// Maps an IO error on `path` to the host error that names it.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostError {
    let path = path.to_path_buf();
    move |source| HostError::DataDir {
        action,
        path,
        source,
    }
}

fn new_id() -> String {
    let bytes: [u8; HOST_ID_RANDOM_BYTES] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("h-{hex}")
}

fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_HOST_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create(&data).unwrap();
        assert!(first.starts_with("h-") && first.len() == 2 + 16, "{first}");
        assert_eq!(load_or_create(&data).unwrap(), first);
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HOST_ID_FILE), "not an id\n").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, HostError::BadHostId { .. }), "{err}");
    }
}
