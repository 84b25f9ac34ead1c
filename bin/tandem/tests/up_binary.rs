//! The `tandem` binary as a new user runs it: `tandem up` serves, tokens
//! from `tandem token` work against it, and SIGTERM drains it cleanly.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{TANDEM, start_up};

mod support;

async fn health(addr: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let response = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
    Ok(response.into_inner().status())
}

async fn wait_serving(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(ServingStatus::Serving) = health(addr).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tandem up at {addr} never said SERVING");
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status;
        }
        assert!(Instant::now() < deadline, "tandem did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_accepts_cli_tokens_and_drains_on_sigterm() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut running = start_up(data_dir.path(), &[("TANDEM_SHUTDOWN_DRAIN", "3s")]);
    wait_serving(&running.addr).await;
    for service in ["careplans", "checkins", "triage", "notifications"] {
        assert!(data_dir.path().join(format!("{service}.db")).exists(), "{service}.db in the data dir");
    }

    // A token minted by `tandem token` with the same data dir is accepted.
    let output = Command::new(TANDEM)
        .args(["token", "--role", "integration", "--org", "demo-clinic", "--sub", "ehr-1", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .expect("run tandem token");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", running.addr)).unwrap().connect().await.unwrap();
    let mut client = tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient::new(channel);
    let mut request = tonic::Request::new(tandem_proto::careplans::v1::ListPatientsRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.list_patients(request).await.expect("the CLI's token is accepted");

    // SIGTERM: health turns NOT_SERVING while draining, then the process exits 0.
    sigterm(&running.child);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut saw_not_serving = false;
    while Instant::now() < deadline {
        if let Ok(ServingStatus::NotServing) = health(&running.addr).await {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_not_serving, "health said NOT_SERVING during the drain");
    let status = wait_exit(&mut running.child);
    assert!(status.success(), "tandem up exited with {status}");
}

#[test]
fn up_help_lists_every_setting_with_its_default() {
    let output = Command::new(TANDEM).args(["up", "--help"]).output().expect("run tandem up --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for setting in tandem_server::config::SETTINGS {
        assert!(help.contains(setting.env), "{} missing from --help", setting.env);
    }
    assert!(help.contains("[default: 127.0.0.1:50051]"), "{help}");
    assert!(help.contains("[default: ./tandem-data]"), "{help}");
}

#[test]
fn token_refuses_a_patient_subject_that_is_not_a_patient_id() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(TANDEM)
        .args(["token", "--role", "patient", "--org", "demo-clinic", "--sub", "alice", "--data-dir"])
        .arg(data_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("patient's id"));
}

#[test]
fn a_second_up_on_a_taken_port_says_what_to_do() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = listener.local_addr().unwrap().to_string();
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(TANDEM)
        .args(["up", "--listen", &taken, "--data-dir"])
        .arg(data_dir.path())
        .env("TANDEM_LOG", "error")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen on") && stderr.contains("--listen"), "{stderr}");
}
