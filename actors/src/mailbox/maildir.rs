//! Delivery into Maildir (<https://cr.yp.to/proto/maildir.html>) with
//! Maildir++ folders.
//!
//! On-disk format, under the store's root:
//!
//! ```text
//! <root>/<mailbox>/{tmp,new,cur}/            the inbox
//! <root>/<mailbox>/.<folder>/{tmp,new,cur}/  a folder, e.g. .Junk
//! ```
//!
//! A message is written to `tmp/<unique>`, fsynced, renamed into `new/`, and
//! `new/` is fsynced, so once [`deliver`] returns the message survives a
//! crash; directories created on the way are fsynced in their parents too.
//! Delivering to a folder creates the inbox as well (a Maildir++ folder lives
//! inside a Maildir) and marks the folder with an empty `maildirfolder` file. A
//! crash before the rename leaves a file in `tmp/` that readers ignore (the
//! caller retries and writes a new one).
//!
//! Unique names follow the Maildir spec: `<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>`,
//! where `Q<n>` counts deliveries in this process, so two deliveries in the
//! same microsecond differ; `/` and `:` in the host name are written `\057`
//! and `\072`, as the spec asks.
//!
//! The mailbox name comes from mail (a lower-case address chosen by the
//! caller), so it is confined: no `/`, no NUL, not starting with `.`, not
//! empty. The same holds for a folder name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Deliveries in this process, for unique names.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `content` into `<root>/<mailbox>` (or its folder `.<folder>`) and
/// returns the path in `new/`. Blocking: call it from `spawn_blocking`.
pub fn deliver(root: &Path, mailbox: &str, folder: Option<&str>, content: &[u8]) -> io::Result<PathBuf> {
    check_name("mailbox", mailbox)?;
    if let Some(folder) = folder {
        check_name("folder", folder)?;
    }
    if !root.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("store root {} is not a directory", root.display()),
        ));
    }
    let inbox = root.join(mailbox);
    create_maildir(&inbox)?;
    let maildir = match folder {
        None => inbox,
        Some(folder) => {
            let maildir = inbox.join(format!(".{folder}"));
            if create_maildir(&maildir)? {
                // Maildir++: marks a folder for readers that walk the tree.
                write_synced(&maildir.join("maildirfolder"), b"")?;
                sync_dir(&maildir)?;
            }
            maildir
        }
    };

    let name = unique_name(content.len());
    let tmp = maildir.join("tmp").join(&name);
    let new = maildir.join("new").join(&name);
    let written = write_synced(&tmp, content).and_then(|()| fs::rename(&tmp, &new));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    sync_dir(&maildir.join("new"))?;
    Ok(new)
}

fn check_name(what: &str, name: &str) -> io::Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid {what} name {name:?}")));
    }
    Ok(())
}

/// Creates `maildir` (its parent exists) and its `tmp`, `new` and `cur`,
/// fsyncing the parent of every directory created so that the directories
/// themselves are durable. Returns whether `maildir` itself was created.
fn create_maildir(maildir: &Path) -> io::Result<bool> {
    let created = create_dir(maildir)?;
    if created && let Some(parent) = maildir.parent() {
        sync_dir(parent)?;
    }
    let mut created_sub = false;
    for sub in ["tmp", "new", "cur"] {
        created_sub |= create_dir(&maildir.join(sub))?;
    }
    if created_sub {
        sync_dir(maildir)?;
    }
    Ok(created)
}

/// Creates `dir` if missing; returns whether it did.
fn create_dir(dir: &Path) -> io::Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(err) => Err(err),
    }
}

fn write_synced(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unique_name(size: usize) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.M{}P{}Q{}.{},S={size}", now.as_secs(), now.subsec_micros(), std::process::id(), count, host_name())
}

/// This host's name for unique names, with `/` and `:` escaped.
fn host_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "localhost".to_string());
    let name = raw.trim();
    let name = if name.is_empty() { "localhost" } else { name };
    name.replace('/', "\\057").replace(':', "\\072")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_lands_in_new_with_a_unique_name_and_its_size() {
        let root = tempfile::tempdir().unwrap();
        let content = b"Subject: hi\r\n\r\nhello\r\n";
        let path = deliver(root.path(), "anna@contoso.com", None, content).unwrap();
        assert_eq!(path.parent().unwrap(), root.path().join("anna@contoso.com/new"));
        assert_eq!(fs::read(&path).unwrap(), content);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.ends_with(&format!(",S={}", content.len())), "{name}");
        assert!(name.contains(&format!("P{}Q", std::process::id())), "{name}");
        for sub in ["tmp", "new", "cur"] {
            assert!(root.path().join("anna@contoso.com").join(sub).is_dir(), "{sub} missing");
        }
        assert_eq!(fs::read_dir(root.path().join("anna@contoso.com/tmp")).unwrap().count(), 0, "tmp/ not empty");
    }

    #[test]
    fn deliveries_in_the_same_instant_get_different_names() {
        let root = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> =
            (0..50).map(|_| deliver(root.path(), "bob@contoso.com", None, b"x\r\n").unwrap()).collect();
        let mut names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 50);
        assert_eq!(fs::read_dir(root.path().join("bob@contoso.com/new")).unwrap().count(), 50);
    }

    #[test]
    fn a_folder_is_a_maildir_plus_plus_subdirectory() {
        let root = tempfile::tempdir().unwrap();
        let path = deliver(root.path(), "anna@contoso.com", Some("Junk"), b"spam\r\n").unwrap();
        assert_eq!(path.parent().unwrap(), root.path().join("anna@contoso.com/.Junk/new"));
        assert!(root.path().join("anna@contoso.com/.Junk/cur").is_dir());
        assert!(root.path().join("anna@contoso.com/.Junk/maildirfolder").is_file());
        assert!(root.path().join("anna@contoso.com/new").is_dir(), "the inbox is created with its folder");
    }

    #[test]
    fn names_that_would_leave_the_root_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "../etc", "a/b", ".hidden", "nul\0byte"] {
            let err = deliver(root.path(), bad, None, b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        for bad in ["../x", ".Junk", "a/b", ""] {
            let err = deliver(root.path(), "anna@contoso.com", Some(bad), b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "folder {bad:?}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0, "something was created");
    }

    #[test]
    fn a_missing_root_is_an_error_not_a_new_tree() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("absent");
        let err = deliver(&missing, "anna@contoso.com", None, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!missing.exists());
    }
}
