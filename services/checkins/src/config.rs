//! The check-ins service's own settings (section `checkins` of the config
//! file; `TANDEM_CHECKINS__...` in the environment).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_proto::checkins::v1::CrisisResource;

/// One crisis resource as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// e.g. "988 Suicide & Crisis Lifeline".
    pub name: String,
    /// e.g. "Call or text 988".
    pub contact: String,
}

/// Settings of the check-ins service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckInsSettings {
    /// Crisis resources for organisations without their own list.
    pub crisis_resources: Vec<Resource>,
    /// Crisis resources per organisation slug, replacing the default list.
    pub org_crisis_resources: BTreeMap<String, Vec<Resource>>,
    /// The crisis contact triage pages when a patient's care team is not
    /// known; empty when there is none. Not a key of this section: it is the
    /// shared setting `triage.crisis_contact`
    /// ([`tandem_server::config::crisis_contact`]), filled in at start-up.
    #[serde(skip)]
    pub crisis_contact: String,
}

impl Default for CheckInsSettings {
    fn default() -> Self {
        // US default: the 988 Suicide & Crisis Lifeline (call or text 988), and
        // 911 for immediate danger.
        Self {
            crisis_resources: vec![
                Resource { name: "988 Suicide & Crisis Lifeline".to_owned(), contact: "Call or text 988".to_owned() },
                Resource {
                    name: "Emergency services".to_owned(),
                    contact: "If you are in immediate danger, call 911".to_owned(),
                },
            ],
            org_crisis_resources: BTreeMap::new(),
            crisis_contact: tandem_server::config::DEFAULT_CRISIS_CONTACT.to_owned(),
        }
    }
}

impl CheckInsSettings {
    /// The settings of the `checkins` section, with the shared crisis contact.
    pub fn load(figment: &figment::Figment) -> Result<Self, tandem_server::config::ConfigError> {
        let mut settings: Self = tandem_server::config::section(figment, "checkins")?;
        settings.crisis_contact = tandem_server::config::crisis_contact(figment)?;
        Ok(settings)
    }

    /// Whether an organisation has a crisis contact to page when a
    /// patient's care team is not known. An org's own contact, set through
    /// triage's rules, is not seen here: without a configured default the
    /// reply may say nobody is alerted when that contact is, never the reverse.
    pub fn has_crisis_contact(&self) -> bool {
        !self.crisis_contact.trim().is_empty()
    }

    /// The crisis resources shown to a patient of `org`.
    pub fn resources_for(&self, org: &str) -> Vec<CrisisResource> {
        let list = self.org_crisis_resources.get(org).filter(|list| !list.is_empty()).unwrap_or(&self.crisis_resources);
        list.iter()
            .map(|resource| CrisisResource { name: resource.name.clone(), contact: resource.contact.clone() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_988_and_an_org_may_have_its_own() {
        let mut settings = CheckInsSettings::default();
        assert!(settings.resources_for("any").iter().any(|r| r.contact.contains("988")));
        settings
            .org_crisis_resources
            .insert("uk-clinic".into(), vec![Resource { name: "Samaritans".into(), contact: "Call 116 123".into() }]);
        assert_eq!(settings.resources_for("uk-clinic")[0].name, "Samaritans");
        assert!(settings.resources_for("other").iter().any(|r| r.contact.contains("988")));
    }

    #[test]
    fn the_crisis_contact_comes_from_the_shared_setting_not_this_section() {
        use figment::providers::Serialized;
        let figment = figment::Figment::from(Serialized::default("checkins.crisis_resources", Vec::<Resource>::new()));
        let settings = CheckInsSettings::load(&figment).unwrap();
        assert_eq!(settings.crisis_contact, "on-call");
        assert!(settings.has_crisis_contact());
        let figment = figment
            .merge(Serialized::default("triage.crisis_contact", ""))
            .merge(Serialized::default("checkins.crisis_contact", "ignored"));
        let settings = CheckInsSettings::load(&figment).unwrap();
        assert!(!settings.has_crisis_contact(), "{settings:?}");
    }
}
