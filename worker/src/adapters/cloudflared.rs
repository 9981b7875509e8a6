//! A cloudflared config file's `ingress` rules, kept in step with apps'
//! endpoints: one `{hostname, service}` rule per hostname, before the
//! catch-all (the last rule, without a hostname, which cloudflared requires).
//! Idempotent; the file is rewritten (atomically, under a lock shared by the
//! workers of this host) only when a rule changes. Norn does not restart
//! cloudflared: it reads the file at its start.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::{ProvisionError, Tunnel};

pub struct CloudflaredFile {
    pub path: PathBuf,
    /// Where the rules send traffic (Norn's ingress).
    pub service: String,
}

fn failed(what: String) -> impl Fn(std::io::Error) -> ProvisionError {
    move |e| ProvisionError::Failed(format!("{what}: {e}"))
}

fn rule_host(rule: &Value) -> Option<&str> {
    rule.get("hostname").and_then(Value::as_str)
}

impl CloudflaredFile {
    /// Runs `change` on the file's ingress rules under an exclusive lock;
    /// writes the file back when it returns `true`.
    fn edit(&self, change: impl FnOnce(&mut Vec<Value>) -> bool) -> Result<bool, ProvisionError> {
        let path = self.path.display().to_string();
        let _lock = super::filelock::exclusive(&lock_path(&self.path))
            .map_err(failed(format!("locking {path}")))?;
        let text =
            std::fs::read_to_string(&self.path).map_err(failed(format!("reading {path}")))?;
        let mut doc: Value = serde_yaml::from_str(&text)
            .map_err(|e| ProvisionError::Failed(format!("{path} is not valid YAML: {e}")))?;
        let map = doc
            .as_mapping_mut()
            .ok_or_else(|| ProvisionError::Failed(format!("{path} is not a YAML mapping")))?;
        let mut rules = match map.get("ingress") {
            None => Vec::new(),
            Some(Value::Sequence(rules)) => rules.clone(),
            Some(_) => {
                return Err(ProvisionError::Failed(format!(
                    "{path}: `ingress` is not a list"
                )));
            }
        };
        if !change(&mut rules) {
            return Ok(false);
        }
        map.insert("ingress".into(), Value::Sequence(rules));
        let out = serde_yaml::to_string(&doc)
            .map_err(|e| ProvisionError::Failed(format!("writing {path}: {e}")))?;
        let tmp = self.path.with_extension("norn-tmp");
        std::fs::write(&tmp, out).map_err(failed(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path).map_err(failed(format!("replacing {path}")))?;
        Ok(true)
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// Puts a rule for each of `hostnames` before the catch-all (added when
/// missing); a rule already there for one of them is replaced.
fn upsert(rules: &mut Vec<Value>, hostnames: &[String], service: &str) -> bool {
    let before = rules.clone();
    rules.retain(|r| !rule_host(r).is_some_and(|h| hostnames.iter().any(|n| n == h)));
    let catch_all = match rules.last() {
        Some(last) if rule_host(last).is_none() => rules.pop(),
        _ => None,
    };
    for hostname in hostnames {
        let mut rule = Mapping::new();
        rule.insert("hostname".into(), hostname.as_str().into());
        rule.insert("service".into(), service.into());
        rules.push(Value::Mapping(rule));
    }
    let catch_all = catch_all.unwrap_or_else(|| {
        let mut rule = Mapping::new();
        rule.insert("service".into(), "http_status:404".into());
        Value::Mapping(rule)
    });
    rules.push(catch_all);
    *rules != before
}

#[async_trait::async_trait]
impl Tunnel for CloudflaredFile {
    async fn route(
        &self,
        hostnames: &[String],
        previous: &[String],
    ) -> Result<String, ProvisionError> {
        let stale: Vec<String> = previous
            .iter()
            .filter(|p| !hostnames.contains(p))
            .cloned()
            .collect();
        let changed = self.edit(|rules| {
            let removed = remove(rules, &stale);
            upsert(rules, hostnames, &self.service) || removed
        })?;
        Ok(format!(
            "{}: {} → {}{}",
            self.path.display(),
            hostnames.join(", "),
            self.service,
            if changed { "" } else { " (unchanged)" }
        ))
    }

    async fn unroute(&self, hostnames: &[String]) -> Result<String, ProvisionError> {
        let changed = self.edit(|rules| remove(rules, hostnames))?;
        Ok(format!(
            "{}: rules for {} {}",
            self.path.display(),
            hostnames.join(", "),
            if changed {
                "removed"
            } else {
                "were already gone"
            }
        ))
    }
}

fn remove(rules: &mut Vec<Value>, hostnames: &[String]) -> bool {
    let before = rules.len();
    rules.retain(|r| !rule_host(r).is_some_and(|h| hostnames.iter().any(|n| n == h)));
    rules.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Vec<Value> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn rules_go_before_the_catch_all_once_and_leave_the_others_alone() {
        let mut r = rules(
            "- {hostname: other.example.com, service: 'http://x:1'}\n- {service: 'http_status:404'}\n",
        );
        let hosts = vec!["shop.example.com".to_owned()];
        assert!(upsert(&mut r, &hosts, "http://localhost:8880"));
        assert_eq!(rule_host(&r[0]), Some("other.example.com"));
        assert_eq!(rule_host(&r[1]), Some("shop.example.com"));
        assert_eq!(r[2]["service"], "http_status:404");
        assert!(
            !upsert(&mut r, &hosts, "http://localhost:8880"),
            "idempotent"
        );
        assert_eq!(r.len(), 3);
        assert!(remove(&mut r, &hosts));
        assert_eq!(r.len(), 2);
        assert!(!remove(&mut r, &hosts));
    }

    #[test]
    fn a_file_without_a_catch_all_gets_one_last() {
        let mut r = Vec::new();
        assert!(upsert(
            &mut r,
            &["a.example.com".to_owned()],
            "http://localhost:1"
        ));
        assert_eq!(r.len(), 2);
        assert_eq!(r[1]["service"], "http_status:404");
    }
}
