//! `--download`: fetches the four official Fashion-MNIST files into
//! `data/fashion-mnist`, with a progress bar, and verifies each against its published MD5.
//!
//! Each file is streamed to `<name>.part`, checked, then renamed: an interrupted or
//! corrupted download never leaves a file under the final name. Plain HTTP only (the
//! official mirror is HTTP); the base URL can be changed with `data.download_url`.
//!
//! The expected MD5s are the published ones ([`FILES`]). A mirror that serves other
//! bytes (recompressed files, or the test suite's synthetic fixtures) can be checked
//! against its own MD5s with the environment variable [`MD5S_ENV`]
//! (`KDTRAIN_DOWNLOAD_MD5S`): four lowercase hex digests separated by commas, in the
//! order train images, train labels, test images, test labels. It exists for testing
//! mirrors; leave it unset to get the official data.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::{Digest, Md5};

use crate::data::FILES;

/// Largest file accepted (the train images are about 26 MB).
const MAX_BYTES: u64 = 64 << 20;

/// Environment variable with four comma-separated MD5s that replace the published ones
/// (for testing mirrors; see the module documentation).
pub const MD5S_ENV: &str = "KDTRAIN_DOWNLOAD_MD5S";

/// The MD5 expected for each of [`FILES`]: the published ones, or those of [`MD5S_ENV`].
///
/// # Errors
/// A usage error when the variable is set but is not four 32-digit hex digests.
fn expected_md5s() -> Result<[String; 4]> {
    let published = FILES.map(|(_, m)| m.to_string());
    let Some(v) = std::env::var_os(MD5S_ENV) else {
        return Ok(published);
    };
    let v = v.to_string_lossy().to_ascii_lowercase();
    let parts: Vec<String> = v.split(',').map(|p| p.trim().to_string()).collect();
    let ok = |p: &String| p.len() == 32 && p.chars().all(|c| c.is_ascii_hexdigit());
    match <[String; 4]>::try_from(parts) {
        Ok(a) if a.iter().all(ok) => Ok(a),
        _ => Err(crate::error::UsageError(format!(
            "{MD5S_ENV} = {v:?}: expected four comma-separated MD5 hex digests (train images, \
             train labels, test images, test labels); unset it to check the published MD5s"
        ))
        .into()),
    }
}

/// Downloads every missing file of [`FILES`] (as `<stem>.gz`) from `base_url` into
/// `dir`, skipping files already present. Returns `dir`.
///
/// # Errors
/// Names the URL or file: a connection or HTTP error, a file over 64 MiB, or an MD5
/// that differs from the published one (or [`MD5S_ENV`]'s; the file is deleted);
/// [`crate::error::Interrupted`] after Ctrl-C, SIGTERM or SIGHUP (the partial file is
/// deleted).
pub fn download_all(base_url: &str, dir: &Path, quiet: bool) -> Result<PathBuf> {
    let md5s = expected_md5s()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let base = if base_url.ends_with('/') {
        base_url.to_string()
    } else {
        format!("{base_url}/")
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .timeout_connect(Some(std::time::Duration::from_secs(20)))
        .build()
        .into();
    for ((stem, _), md5) in FILES.iter().zip(&md5s) {
        let name = format!("{stem}.gz");
        let target = dir.join(&name);
        if target.is_file() {
            continue;
        }
        let url = format!("{base}{name}");
        fetch(&agent, &url, &target, md5, quiet)?;
    }
    Ok(dir.to_path_buf())
}

fn fetch(agent: &ureq::Agent, url: &str, target: &Path, md5: &str, quiet: bool) -> Result<()> {
    let part = PathBuf::from(format!("{}.part", target.display()));
    let result = (|| -> Result<()> {
        let resp = agent
            .get(url)
            .call()
            .map_err(|e| anyhow::anyhow!("downloading {url}: {e}"))?;
        let total = resp.body().content_length();
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let mut reader = resp.into_body().into_reader().take(MAX_BYTES + 1);
        let mut file = std::fs::File::create(&part)
            .with_context(|| format!("cannot create {}", part.display()))?;
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got: u64 = 0;
        loop {
            // Ctrl-C, SIGTERM or SIGHUP: stop between chunks (64 KiB), not when training
            // would have started. A connection that sends nothing blocks the read; the
            // second signal ends the process at once.
            if crate::error::INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                bar.finish_and_clear();
                return Err(crate::error::Interrupted::new(format!(
                    "interrupted while downloading {url} (after {got} bytes); its partial \
                     file was removed and the files already downloaded are kept: run the \
                     command again to fetch the rest"
                ))
                .into());
            }
            let k = reader
                .read(&mut buf)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "downloading {url}: connection lost after {got} bytes ({e}); run the command again"
                    )
                })?;
            if k == 0 {
                break;
            }
            got += k as u64;
            if got > MAX_BYTES {
                bail!(
                    "{url}: more than {} MiB; this is not a Fashion-MNIST file",
                    MAX_BYTES >> 20
                );
            }
            hasher.update(&buf[..k]);
            file.write_all(&buf[..k])
                .with_context(|| format!("writing {}", part.display()))?;
            bar.inc(k as u64);
        }
        bar.finish_and_clear();
        if let Some(t) = total
            && t != got
        {
            bail!("{url}: the download stopped after {got} of {t} bytes; run the command again");
        }
        let digest = crate::hex(&hasher.finalize());
        if digest != md5 {
            bail!(
                "{}: MD5 {digest} does not match the published {md5}; the file was removed. \
                 The mirror may be serving a different file: try again later or install \
                 Debian's dataset-fashion-mnist",
                target.display()
            );
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&part, target)
            .with_context(|| format!("cannot rename {} to {}", part.display(), target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}
