//! The `npz` data source (see [`super::Source`]).

use std::path::Path;

use anyhow::Result;

use super::{RawData, ReadOptions};

/// Reads the data set at `path`.
pub fn load(path: &Path, _o: &ReadOptions) -> Result<RawData> {
    crate::error::usage(format!(
        "{}: the npz source is not built yet",
        path.display()
    ))
}
