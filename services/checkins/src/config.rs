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
        }
    }
}

impl CheckInsSettings {
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
}
