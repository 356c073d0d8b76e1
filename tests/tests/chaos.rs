//! The short seeded variant of `shepherd-chaos` (the full run is by hand;
//! its figures are in the closing notes): 800 tasks over 4 agents and two
//! scheduler replicas under at least 12 seeded faults, on a PostgreSQL
//! cluster of its own. It must lose nothing, leave nothing stuck or
//! unplaced, and leave no process behind.

use shepherd_testkit::bin_path;

#[tokio::test]
async fn a_short_chaos_run_loses_nothing_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        tokio::process::Command::new(bin_path("shepherd-chaos")?)
            .args([
                "--seed",
                "7",
                "--tasks",
                "800",
                "--agents",
                "4",
                "--task-ms",
                "100",
                "--min-faults",
                "12",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the chaos run failed:\n{report}");
    for must in [
        "tasks lost: 0",
        "not final: 0",
        "workflows without exactly one running runner: 0",
        "processes left behind: 0",
    ] {
        assert!(report.contains(must), "missing {must:?} in:\n{report}");
    }
    Ok(())
}
