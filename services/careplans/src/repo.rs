//! The service's SQL, portable across SQLite and PostgreSQL.

use std::time::SystemTime;

use sqlx::Row;
use sqlx::any::AnyRow;
use tandem_events::{Outbox, topics};
use tandem_proto::events::v1 as events;
use tandem_proto::events::v1::event_envelope::Payload;
use tandem_proto::ids::{OrgId, PatientId};
use tandem_server::ServiceError;
use tandem_store::paging::Cursor;
use tandem_store::{Store, StoreError, from_unix_micros, is_unique_violation, unix_micros};

use crate::domain::{NewPatient, Patient};

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// Another patient of the org has this external id.
    #[error("a patient with this external_id is already enrolled in the organisation")]
    DuplicateExternalId,
    /// The idempotency key was used before for a different request.
    #[error("idempotency_key was already used for a different request; use a new key for a new request")]
    IdempotencyConflict,
    /// A stored row does not parse: the database was changed outside Tandem.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The outbox refused the event.
    #[error(transparent)]
    Events(#[from] tandem_events::Error),
}

impl From<sqlx::Error> for RepoError {
    fn from(error: sqlx::Error) -> Self {
        RepoError::Store(StoreError::Sql(error))
    }
}

/// What a caller hears of a repository error: the one place this service
/// chooses (see `tandem_server::error`).
impl From<RepoError> for ServiceError {
    fn from(error: RepoError) -> Self {
        match error {
            RepoError::DuplicateExternalId => ServiceError::exists(error.to_string()),
            RepoError::IdempotencyConflict => ServiceError::KeyReused,
            RepoError::Corrupt(_) => ServiceError::internal(error),
            RepoError::Store(error) => error.into(),
            RepoError::Events(error) => error.into(),
        }
    }
}

impl From<RepoError> for tonic::Status {
    fn from(error: RepoError) -> Self {
        ServiceError::from(error).into()
    }
}

/// The outcome of an enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A new patient.
    Created(Patient),
    /// A retry of an earlier request: the patient it created.
    Replayed(Patient),
}

/// SQL for the care plans service; every change enqueues its event in the
/// same transaction.
#[derive(Debug, Clone)]
pub struct Repo {
    store: Store,
    outbox: Outbox,
}

const PATIENT_COLUMNS: &str = "id, org_id, external_id, display_name, time_zone, enrolled_at, idempotency_key";

impl Repo {
    /// A repository over the store and its outbox.
    pub fn new(store: Store, outbox: Outbox) -> Self {
        Self { store, outbox }
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Enqueues `payload` about `patient` on the careplans topic inside `tx`.
    pub async fn enqueue(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        org: &OrgId,
        patient: &PatientId,
        payload: Payload,
    ) -> Result<(), RepoError> {
        let event = self.outbox.envelope(org, patient, payload);
        self.outbox.enqueue(tx, topics::CAREPLANS, &event).await?;
        Ok(())
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Enrols a patient, or returns the patient an earlier request with the
    /// same idempotency key created.
    pub async fn enroll_patient(&self, org: &OrgId, new: &NewPatient) -> Result<Enrolled, RepoError> {
        if let Some(existing) = self.patient_by_idempotency_key(org, &new.idempotency_key).await? {
            return replay(existing, new);
        }
        let patient = Patient {
            id: PatientId::new(),
            org: org.clone(),
            external_id: new.external_id.clone(),
            display_name: new.display_name.clone(),
            time_zone: new.time_zone,
            // Stored with microsecond precision: keep exactly what a retry reads back.
            enrolled_at: from_unix_micros(unix_micros(SystemTime::now())),
        };
        let mut tx = self.store.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO patients (id, org_id, external_id, display_name, time_zone, enrolled_at, idempotency_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(patient.id.to_string())
        .bind(patient.org.to_string())
        .bind(patient.external_id.clone())
        .bind(patient.display_name.clone())
        .bind(patient.time_zone.name().to_owned())
        .bind(unix_micros(patient.enrolled_at))
        .bind(new.idempotency_key.clone())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                let enrolled = events::PatientEnrolled {
                    external_id: patient.external_id.clone(),
                    time_zone: patient.time_zone.name().to_owned(),
                };
                self.enqueue(&mut tx, org, &patient.id, Payload::PatientEnrolled(enrolled)).await?;
                self.outbox.commit(tx).await?;
                Ok(Enrolled::Created(patient))
            }
            Err(error) if is_unique_violation(&error) => {
                tx.rollback().await?;
                // Either a concurrent retry with the same key won the race,
                // or the external id is taken.
                match self.patient_by_idempotency_key(org, &new.idempotency_key).await? {
                    Some(existing) => replay(existing, new),
                    None => Err(RepoError::DuplicateExternalId),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn patient_by_idempotency_key(&self, org: &OrgId, key: &str) -> Result<Option<Patient>, RepoError> {
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE org_id = $1 AND idempotency_key = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(org.to_string())
            .bind(key.to_owned())
            .fetch_optional(self.store.pool())
            .await?;
        row.map(|row| patient_from_row(&row)).transpose()
    }

    /// One patient by id, in any org.
    pub async fn patient(&self, id: &PatientId) -> Result<Option<Patient>, RepoError> {
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(self.store.pool()).await?;
        row.map(|row| patient_from_row(&row)).transpose()
    }

    /// A page of an org's patients in enrolment order, after `cursor`.
    pub async fn list_patients(
        &self,
        org: &OrgId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<Patient>, Option<Cursor>), RepoError> {
        let (at, id) = cursor.map(|c| (c.at, c.id.clone())).unwrap_or((i64::MIN, String::new()));
        let sql = format!(
            "SELECT {PATIENT_COLUMNS} FROM patients \
             WHERE org_id = $1 AND (enrolled_at > $2 OR (enrolled_at = $3 AND id > $4)) \
             ORDER BY enrolled_at, id LIMIT $5"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(org.to_string())
            .bind(at)
            .bind(at)
            .bind(id)
            .bind(i64::from(limit) + 1)
            .fetch_all(self.store.pool())
            .await?;
        let mut patients = rows.iter().map(patient_from_row).collect::<Result<Vec<_>, _>>()?;
        let next = if patients.len() > limit as usize {
            patients.truncate(limit as usize);
            patients.last().map(|last| Cursor { at: unix_micros(last.enrolled_at), id: last.id.to_string() })
        } else {
            None
        };
        Ok((patients, next))
    }
}

fn replay(existing: Patient, new: &NewPatient) -> Result<Enrolled, RepoError> {
    let same = existing.external_id == new.external_id
        && existing.display_name == new.display_name
        && existing.time_zone == new.time_zone;
    if !same {
        return Err(RepoError::IdempotencyConflict);
    }
    Ok(Enrolled::Replayed(existing))
}

fn patient_from_row(row: &AnyRow) -> Result<Patient, RepoError> {
    let corrupt = |what: &str| RepoError::Corrupt(format!("patients.{what}"));
    let id: String = row.try_get("id")?;
    let org: String = row.try_get("org_id")?;
    let time_zone: String = row.try_get("time_zone")?;
    let enrolled_at: i64 = row.try_get("enrolled_at")?;
    Ok(Patient {
        id: id.parse().map_err(|_| corrupt("id"))?,
        org: org.parse().map_err(|_| corrupt("org_id"))?,
        external_id: row.try_get("external_id")?,
        display_name: row.try_get("display_name")?,
        time_zone: time_zone.parse().map_err(|_| corrupt("time_zone"))?,
        enrolled_at: from_unix_micros(enrolled_at),
    })
}

#[cfg(test)]
mod tests {
    use tandem_store::store_test;

    use super::*;
    use crate::MIGRATIONS;

    fn new_patient(key: &str, external_id: &str) -> NewPatient {
        NewPatient {
            idempotency_key: key.to_owned(),
            external_id: external_id.to_owned(),
            display_name: "Test Patient".to_owned(),
            time_zone: chrono_tz::America::Chicago,
        }
    }

    fn org(slug: &str) -> OrgId {
        slug.parse().unwrap()
    }

    async fn test_repo(store: Store) -> Repo {
        tandem_events::install(&store).await.unwrap();
        let outbox = Outbox::new(store.clone(), "careplans");
        Repo::new(store, outbox)
    }

    store_test!(enrolment_is_stored_and_read_back, &MIGRATIONS, "careplans", |store| async move {
        let repo = test_repo(store).await;
        let Enrolled::Created(created) = repo.enroll_patient(&org("north"), &new_patient("k1", "mrn-1")).await.unwrap()
        else {
            panic!("first enrolment must create");
        };
        let read = repo.patient(&created.id).await.unwrap().unwrap();
        // Stored times keep microsecond precision.
        assert_eq!(unix_micros(read.enrolled_at), unix_micros(created.enrolled_at));
        assert_eq!(read.external_id, "mrn-1");
        assert_eq!(read.time_zone, chrono_tz::America::Chicago);
        assert_eq!(read.org, org("north"));
        assert!(repo.patient(&PatientId::new()).await.unwrap().is_none());
    });

    store_test!(
        retry_with_same_key_replays_and_conflicting_reuse_fails,
        &MIGRATIONS,
        "careplans",
        |store| async move {
            let repo = test_repo(store).await;
            let first = repo.enroll_patient(&org("north"), &new_patient("k1", "mrn-1")).await.unwrap();
            let Enrolled::Created(first) = first else { panic!("must create") };
            let again = repo.enroll_patient(&org("north"), &new_patient("k1", "mrn-1")).await.unwrap();
            assert_eq!(again, Enrolled::Replayed(first.clone()));
            let conflicting = repo.enroll_patient(&org("north"), &new_patient("k1", "mrn-2")).await;
            assert!(matches!(conflicting, Err(RepoError::IdempotencyConflict)));
            let duplicate = repo.enroll_patient(&org("north"), &new_patient("k2", "mrn-1")).await;
            assert!(matches!(duplicate, Err(RepoError::DuplicateExternalId)));
            // The same external id in another org is another patient.
            let other = repo.enroll_patient(&org("south"), &new_patient("k1", "mrn-1")).await.unwrap();
            assert!(matches!(other, Enrolled::Created(_)));
            // Nothing already stored was lost or changed by the failures.
            assert_eq!(repo.patient(&first.id).await.unwrap().unwrap(), first);
        }
    );

    store_test!(listing_pages_through_one_org_only, &MIGRATIONS, "careplans", |store| async move {
        let repo = test_repo(store).await;
        for n in 0..5 {
            repo.enroll_patient(&org("north"), &new_patient(&format!("k{n}"), &format!("mrn-{n}"))).await.unwrap();
        }
        repo.enroll_patient(&org("south"), &new_patient("k9", "mrn-9")).await.unwrap();
        let (page1, next) = repo.list_patients(&org("north"), None, 2).await.unwrap();
        let (page2, next2) = repo.list_patients(&org("north"), next.as_ref(), 2).await.unwrap();
        let (page3, next3) = repo.list_patients(&org("north"), next2.as_ref(), 2).await.unwrap();
        assert_eq!((page1.len(), page2.len(), page3.len()), (2, 2, 1));
        assert!(next3.is_none());
        let mut seen: Vec<_> = page1.iter().chain(&page2).chain(&page3).map(|p| p.external_id.clone()).collect();
        seen.sort();
        assert_eq!(seen, ["mrn-0", "mrn-1", "mrn-2", "mrn-3", "mrn-4"]);
    });

    store_test!(concurrent_retries_create_one_patient, &MIGRATIONS, "careplans", |store| async move {
        let repo = test_repo(store).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let repo = repo.clone();
                tokio::spawn(async move { repo.enroll_patient(&org("north"), &new_patient("same", "mrn-1")).await })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            let enrolled = task.await.unwrap().unwrap();
            let patient = match enrolled {
                Enrolled::Created(p) | Enrolled::Replayed(p) => p,
            };
            ids.push(patient.id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "every retry sees the one patient");
        let (all, _) = repo.list_patients(&org("north"), None, 50).await.unwrap();
        assert_eq!(all.len(), 1);
    });
}
