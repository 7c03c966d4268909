//! Density: the scenario of `nodelet_tests::scale` with 200 pods (`SCALE_PODS` to change it;
//! `make scale` runs it with 1,000 and prints what it measured).

use anyhow::Result;

#[test]
fn many_pods_start_answer_survive_a_restart_and_go() -> Result<()> {
    let pods = std::env::var("SCALE_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let report = nodelet_tests::scale::run(pods)?;
    println!("{report:#?}");
    Ok(())
}
