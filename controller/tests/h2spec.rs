//! h2spec (github.com/summerwind/h2spec, a Go module ./test.sh installs in
//! ~/.cache/agimo/tools/bin) against Agimo's TLS (ALPN h2) and cleartext
//! (h2c by prior knowledge) listeners.
//!
//! One case cannot pass on a cleartext port that serves HTTP/1.1 and h2c
//! alike: "3.5/2, Sends invalid connection preface". Bytes that are not the
//! HTTP/2 preface are read as HTTP/1.1, and answered `400` rather than
//! closed without a word. Every other case passes on both listeners.
//! `H2SPEC_DEBUG=1` prints h2spec's own report.

mod support;

use std::path::PathBuf;

use agimo_testkit::tls::self_signed;
use support::Agimo;

fn h2spec() -> PathBuf {
    let path = std::env::var_os("AGIMO_H2SPEC").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/agimo/tools/bin/h2spec")
    });
    assert!(
        path.exists(),
        "{} is missing: ./test.sh installs it (GOBIN=~/.cache/agimo/tools/bin go install \
         github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible)",
        path.display()
    );
    path
}

/// Runs h2spec on `port` and returns the cases that did not pass, as
/// `<section>/<case title>`.
async fn failing_cases(agimo: &Agimo, port: u16, tls: bool) -> Vec<String> {
    let report = std::env::temp_dir().join(format!("agimo-h2spec-{}-{}-{port}.xml", std::process::id(), agimo.ip));
    let mut command = tokio::process::Command::new(h2spec());
    command.args(["-h", &agimo.ip.to_string(), "-p", &port.to_string(), "-o", "5", "-j"]).arg(&report);
    if tls {
        command.args(["-t", "-k"]);
    }
    let output = command.output().await.expect("h2spec runs");
    if std::env::var_os("H2SPEC_DEBUG").is_some() {
        println!("{}", String::from_utf8_lossy(&output.stdout));
    }
    let xml = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no h2spec report ({e}): {}", String::from_utf8_lossy(&output.stdout)));
    let _ = std::fs::remove_file(&report);
    let cases = xml.matches("<testcase ").count();
    assert!(cases >= 140, "h2spec ran {cases} cases: {}", String::from_utf8_lossy(&output.stdout));
    // <testcase package="http2/3.5" classname="Sends ..." time="..."> then
    // <failure> or <error> before </testcase> when it did not pass.
    xml.split("<testcase ")
        .skip(1)
        .filter(|case| {
            let body = case.split("</testcase>").next().unwrap_or_default();
            body.contains("<failure") || body.contains("<error")
        })
        .map(|case| {
            let attr = |name: &str| {
                case.split(&format!("{name}=\"")).nth(1).and_then(|v| v.split('"').next()).unwrap_or("?").to_owned()
            };
            format!("{}/{}", attr("package"), attr("classname"))
        })
        .collect()
}

#[tokio::test]
async fn h2spec_passes_on_the_tls_and_cleartext_listeners() {
    let cert = self_signed(&["h2spec.example"]);
    let yaml = support::gateway_yaml(
        "  - {name: http, port: 8080, protocol: HTTP}
  - {name: https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
",
    ) + &support::service_yaml("v1")
        + &support::route_to("r", "v1")
        + &support::tls_secret("cert", &cert);
    let agimo = Agimo::start(&yaml, &["v1"]).await;

    let tls = failing_cases(&agimo, 8443, true).await;
    assert!(tls.is_empty(), "h2spec over TLS: {tls:#?}");
    let cleartext = failing_cases(&agimo, 8080, false).await;
    assert_eq!(cleartext, ["http2/3.5/Sends invalid connection preface"], "h2spec over h2c");
}
