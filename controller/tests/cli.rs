//! `agimo run` refuses bad Gateway Service, shutdown and connection options at startup,
//! with a usage error that names the option, before it contacts a cluster.

use std::process::Command;

/// Runs `agimo run ARGS` (with no cluster to reach); returns the exit code and
/// standard error.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_agimo"))
        .arg("run")
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("agimo runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_gateway_service_options_are_usage_errors_that_name_the_option() {
    let selector = "--gateway-service-selector=app=agimo";
    let cases: &[(&[&str], &str)] = &[
        (&["--gateway-service-type=Headless", selector], "--gateway-service-type"),
        // Services must select Agimo's pods.
        (&["--gateway-service-type=LoadBalancer"], "--gateway-service-selector"),
        (&["--gateway-service-type=LoadBalancer", "--gateway-service-selector=app"], "--gateway-service-selector"),
        (&["--gateway-service-type=LoadBalancer", "--gateway-service-selector=,"], "--gateway-service-selector"),
        (&["--gateway-service-type=LoadBalancer", selector, "--gateway-pod-ports=30000-20000"], "--gateway-pod-ports"),
        (&["--gateway-service-type=LoadBalancer", selector, "--gateway-pod-ports=0-10"], "--gateway-pod-ports"),
        (&["--gateway-service-type=LoadBalancer", selector, "--gateway-pod-ports=20000"], "--gateway-pod-ports"),
        (&["--gateway-service-type=LoadBalancer", selector, "--gateway-pod-ports=1-70000"], "--gateway-pod-ports"),
        (
            &["--gateway-service-type=LoadBalancer", selector, "--gateway-service-annotation==x"],
            "--gateway-service-annotation",
        ),
        (
            &["--gateway-service-type=LoadBalancer", selector, "--gateway-static-address-range=10.0.0.0/99"],
            "--gateway-static-address-range",
        ),
        // Two ways of giving Gateways addresses at once.
        (
            &["--gateway-service-type=LoadBalancer", selector, "--gateway-address-pool=10.245.0.0/24"],
            "--gateway-address-pool",
        ),
        (&["--shutdown-delay=soon"], "--shutdown-delay"),
        (&["--park-idle-after=soon"], "--park-idle-after"),
        (&["--park-idle-after=-1s"], "--park-idle-after"),
        (&["--keda-scaler-address=9091"], "--keda-scaler-address"),
    ];
    for (args, option) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "a usage error for {args:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?}: the error names {option}: {stderr}");
    }
}
