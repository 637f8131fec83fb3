//! `--download`: fetches the four official Fashion-MNIST files into
//! `data/fashion-mnist`, with a progress bar, and verifies each against its published MD5.
//!
//! Each file is streamed to `<name>.part`, checked, then renamed: an interrupted or
//! corrupted download never leaves a file under the final name. Plain HTTP only (the
//! official mirror is HTTP); the base URL can be changed with `data.download_url`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use md5::{Digest, Md5};

use crate::data::FILES;

/// Largest file accepted (the train images are about 26 MB).
const MAX_BYTES: u64 = 64 << 20;

/// Downloads every missing file of [`FILES`] (as `<stem>.gz`) from `base_url` into
/// `dir`, skipping files already present. Returns `dir`.
///
/// # Errors
/// Names the URL or file: a connection or HTTP error, a file over 64 MiB, or an MD5
/// that differs from the published one (the file is deleted).
pub fn download_all(base_url: &str, dir: &Path, quiet: bool) -> Result<PathBuf> {
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
    for (stem, md5) in FILES {
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
            let k = reader
                .read(&mut buf)
                .map_err(|e| anyhow::anyhow!("downloading {url}: connection lost ({e})"))?;
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
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
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
