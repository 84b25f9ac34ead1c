//! What the demo and the benchmarks do through the public API: start an
//! embedded or distributed Tandem in-process, mint tokens, enrol patients
//! with a care team, and register verified webhooks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tandem_auth::Role;
use tandem_proto::careplans::v1 as plans;
use tandem_proto::careplans::v1::care_plan_service_client::CarePlanServiceClient;
use tandem_proto::checkins::v1::check_in_service_client::CheckInServiceClient;
use tandem_proto::common::v1 as common;
use tandem_proto::notifications::v1 as notifications;
use tandem_proto::notifications::v1::notification_service_client::NotificationServiceClient;
use tandem_proto::triage::v1::triage_service_client::TriageServiceClient;
use tandem_server::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::webhook::Receiver;

/// A request with a bearer token.
pub fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// The four services' clients on one channel.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Care plans.
    pub plans: CarePlanServiceClient<Channel>,
    /// Check-ins.
    pub checkins: CheckInServiceClient<Channel>,
    /// Triage.
    pub triage: TriageServiceClient<Channel>,
    /// Notifications.
    pub notifications: NotificationServiceClient<Channel>,
}

/// Tandem running in this process until [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Clients connected to it.
    pub clients: Clients,
    signing_key: Vec<u8>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `tandem up` in-process with `settings` (listen on port 0 for a
    /// free port) and extra configuration keys such as `("triage.high_ack", "4s")`.
    pub async fn start(settings: Settings, extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut figment = figment::Figment::from(figment::providers::Serialized::defaults(&settings));
        for (key, value) in extra {
            figment = figment.merge(figment::providers::Serialized::default(key, value));
        }
        std::fs::create_dir_all(&settings.data_dir)?;
        let signing_key = tandem_auth::DevSigningKey::load_or_create(&settings.data_dir)?.bytes().to_vec();
        let listener = tokio::net::TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            crate::up::serve(&settings, &figment, listener, async move {
                let _ = stopped.await;
            })
            .await
        });
        let channel =
            Channel::from_shared(format!("http://{addr}"))?.connect().await.context("connecting to tandem")?;
        let clients = Clients {
            plans: CarePlanServiceClient::new(channel.clone()),
            checkins: CheckInServiceClient::new(channel.clone()),
            triage: TriageServiceClient::new(channel.clone()),
            notifications: NotificationServiceClient::new(channel),
        };
        Ok(Self { addr, clients, signing_key, stop, server })
    }

    /// A development token for `subject` in `org`.
    pub fn token(&self, org: &str, role: Role, subject: &str) -> anyhow::Result<String> {
        Ok(tandem_auth::mint_token(
            &self.signing_key,
            tandem_auth::DEFAULT_ISSUER,
            tandem_auth::DEFAULT_AUDIENCE,
            &org.parse()?,
            role,
            subject,
            Duration::from_secs(3600),
        )?)
    }

    /// Stops serving and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await.context("tandem stopped abnormally")?
    }
}

/// Enrols a patient and sets the care team (clinician ids in chain order,
/// the first the primary, the second the backup, the rest on call).
pub async fn enroll_with_team(
    clients: &mut Clients,
    ehr: &str,
    external_id: &str,
    display_name: &str,
    team: &[(&str, &str)],
) -> anyhow::Result<common::PatientId> {
    let patient = clients
        .plans
        .enroll_patient(authed(
            ehr,
            plans::EnrollPatientRequest {
                idempotency_key: format!("enrol-{external_id}"),
                external_id: external_id.into(),
                display_name: display_name.into(),
                time_zone: "America/Chicago".into(),
            },
        )?)
        .await?
        .into_inner()
        .patient
        .and_then(|patient| patient.id)
        .context("no patient id in the reply")?;
    let members = team
        .iter()
        .enumerate()
        .map(|(position, (id, name))| plans::CareTeamMember {
            clinician_id: (*id).into(),
            role: match position {
                0 => plans::CareTeamRole::Primary,
                1 => plans::CareTeamRole::Backup,
                _ => plans::CareTeamRole::OnCall,
            } as i32,
            display_name: (*name).into(),
        })
        .collect();
    clients
        .plans
        .set_care_team(authed(ehr, plans::SetCareTeamRequest { patient_id: Some(patient.clone()), members })?)
        .await?;
    Ok(patient)
}

/// Registers a signed webhook at `receiver` under `path` for the token's
/// subject (or, for admins, for `subject`), verifies it with the code that
/// arrives, and returns its signing secret.
pub async fn register_webhook(
    clients: &mut Clients,
    token: &str,
    subject: &str,
    receiver: &Receiver,
    path: &str,
) -> anyhow::Result<String> {
    let registered = clients
        .notifications
        .register_endpoint(authed(
            token,
            notifications::RegisterEndpointRequest {
                channel: notifications::Channel::Webhook as i32,
                address: receiver.url(path),
                subject: subject.to_owned(),
                ..Default::default()
            },
        )?)
        .await?
        .into_inner();
    let endpoint = registered.endpoint.context("no endpoint in the reply")?;
    let code = receiver
        .wait_for(Duration::from_secs(30), |r| r.path == path && r.kind() == "endpoint.verification")
        .await
        .context("the verification code never reached the webhook")?;
    let code = code.json["code"].as_str().unwrap_or_default().to_owned();
    clients
        .notifications
        .verify_endpoint(authed(
            token,
            notifications::VerifyEndpointRequest { endpoint_id: endpoint.endpoint_id, code },
        )?)
        .await?;
    Ok(registered.signing_secret)
}
