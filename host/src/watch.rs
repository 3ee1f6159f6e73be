//! `twill run --watch`: reload when the config file or a component it
//! names changes (for development; production reloads on SIGHUP).
//!
//! Watches each file's directory (editors and build tools replace files
//! by renaming over them, which a watch on the file itself would miss),
//! waits until changes have been quiet for [`SETTLE`] (a build writes a
//! component in several steps), then asks the reactor to reload. After
//! each reload it watches whatever the config names now.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::reactor::Control;

/// How long changes must be quiet before a reload.
pub const SETTLE: Duration = Duration::from_millis(300);

/// The files a reload of `config` would read.
fn watched_files(config: &Config) -> BTreeSet<PathBuf> {
    let mut files: BTreeSet<PathBuf> = config
        .plugins
        .values()
        .map(|p| p.component.clone())
        .collect();
    files.insert(config.path.clone());
    files.into_iter().map(|f| absolute(&f)).collect()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Starts watching `config`'s files; each settled change sends
/// [`Control::Reload`] on `control`. Runs until `control` closes.
pub fn spawn(config: &Config, control: mpsc::Sender<Control>) -> notify::Result<()> {
    let (events, mut changed) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && !matches!(e.kind, notify::EventKind::Access(_))
        {
            for p in e.paths {
                let _ = events.send(p);
            }
        }
    })?;
    let mut files = watched_files(config);
    let mut dirs = BTreeSet::new();
    watch_dirs(&mut watcher, &files, &mut dirs)?;
    let path = config.path.clone();
    tokio::spawn(async move {
        tracing::info!(
            files = files.len(),
            "watching the config and its components for changes"
        );
        while let Some(first) = changed.recv().await {
            if !files.contains(&absolute(&first)) {
                continue;
            }
            // Settle: wait until no change for SETTLE.
            while let Ok(Some(_)) = tokio::time::timeout(SETTLE, changed.recv()).await {}
            tracing::info!(file = %first.display(), "changed: reloading");
            if control.send(Control::Reload(None)).await.is_err() {
                break;
            }
            // Follow what the config names now (if it loads).
            if let Ok(config) = Config::load(&path) {
                files = watched_files(&config);
                if let Err(e) = watch_dirs(&mut watcher, &files, &mut dirs) {
                    tracing::warn!(error = %e, "cannot watch a component's directory");
                }
            }
        }
        drop(watcher);
    });
    Ok(())
}

/// Watches the directory of each of `files` not yet in `dirs`.
fn watch_dirs(
    watcher: &mut notify::RecommendedWatcher,
    files: &BTreeSet<PathBuf>,
    dirs: &mut BTreeSet<PathBuf>,
) -> notify::Result<()> {
    for f in files {
        let dir = f.parent().unwrap_or(Path::new("/")).to_path_buf();
        if dirs.insert(dir.clone()) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
    }
    Ok(())
}
