//! Hyper-parameter sweeps over temperature × alpha × objective × seed: [`plan`] expands a
//! sweep file into one resolved config per job, [`exec`] runs the jobs (here, K at a
//! time, or as a Slurm job array) and [`collect`] turns their summaries into a table, a
//! report and a [`heatmap`]. It trains nothing itself: every job is an ordinary
//! `distill` (or `train student`) run in its own folder, `<sweep>/runs/<job id>`.

pub mod collect;
pub mod exec;
pub mod heatmap;
pub mod plan;
