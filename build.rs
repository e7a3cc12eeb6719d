//! Build script: rebuild when a migration changes, and name the commit for `/metrics`.

use std::process::Command;

fn main() {
    // `sqlx::migrate!` embeds migrations/ at compile time; without this, a new migration file
    // would not rebuild the binary until some source file changed.
    println!("cargo:rerun-if-changed=migrations");

    // The commit, for vehicle_state_build_info: GIT_SHA when set (a Docker build, which has no
    // .git), else git's own answer, else "unknown".
    println!("cargo:rerun-if-env-changed=GIT_SHA");
    let sha = std::env::var("GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let output = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            if !output.status.success() {
                return None;
            }
            // Rebuild when HEAD moves: watch git's own files, wherever they are (a worktree's
            // .git is a file pointing elsewhere).
            let git_dir = Command::new("git")
                .args(["rev-parse", "--git-dir", "--git-common-dir"])
                .output()
                .ok()?;
            let dirs = String::from_utf8_lossy(&git_dir.stdout).into_owned();
            let mut dirs = dirs.lines();
            if let (Some(own), Some(common)) = (dirs.next(), dirs.next()) {
                println!("cargo:rerun-if-changed={own}/HEAD");
                println!("cargo:rerun-if-changed={common}/refs/heads");
            }
            Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=VEHICLE_STATE_GIT_SHA={sha}");
}
