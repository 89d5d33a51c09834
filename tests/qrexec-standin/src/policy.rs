//! A subset of the Qubes RPC policy format (`/etc/qubes/policy.d/*.policy`,
//! Qubes 4.1 and later): one rule a line,
//!
//! ```text
//! SERVICE  ARGUMENT  SOURCE  TARGET  ACTION  [PARAM=VALUE ...]
//! qubes.ConnectTCP  +22  client  work  allow
//! *                 *    @anyvm  @default  allow target=work
//! ```
//!
//! `*` matches any service or argument, `+ARG` one argument (`+` alone: no
//! argument); `*` or `@anyvm` any source or target, anything else must be
//! equal. ACTION is `allow`, `deny` or `ask` (taken as allowed: nobody is
//! there to click); `target=QUBE` sends the call elsewhere. The first rule
//! that matches decides; no rule means deny, as in dom0.

/// One rule, with its line number for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    service: String,
    argument: Option<String>,
    source: String,
    target: String,
    pub action: Action,
    redirect: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Ask,
}

/// What the policy says about one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run it in this target: a qube name, or `@dispvm:TEMPLATE`.
    Allow { target: String, line: usize },
    /// Refused by a rule, or by no rule (`line` is `None`).
    Deny { line: Option<usize> },
    /// The matching rule cannot be carried out (such as `@default` with no
    /// `target=`); dom0 refuses those too.
    Invalid { line: usize, why: String },
}

/// Parses a policy file; a bad line refuses the whole file, as dom0 does.
pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [service, argument, source, target, action, params @ ..] = fields.as_slice() else {
            return Err(format!(
                "policy line {number}: expected SERVICE ARGUMENT SOURCE TARGET ACTION, got {line:?}"
            ));
        };
        let argument = match *argument {
            "*" => None,
            a if a.starts_with('+') => Some(a[1..].to_owned()),
            a => {
                return Err(format!(
                    "policy line {number}: argument {a:?} is neither '*' nor '+ARG'"
                ));
            }
        };
        let action = match *action {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "ask" => Action::Ask,
            a => return Err(format!("policy line {number}: unknown action {a:?}")),
        };
        let mut redirect = None;
        for param in params {
            let Some((key, value)) = param.split_once('=') else {
                return Err(format!(
                    "policy line {number}: parameter {param:?} is not KEY=VALUE"
                ));
            };
            match key {
                "target" if action != Action::Deny => redirect = Some(value.to_owned()),
                "target" => {
                    return Err(format!("policy line {number}: deny takes no target="));
                }
                // Accepted for realism; nothing here acts on them.
                "default_target" | "user" | "notify" | "autostart" => {}
                _ => return Err(format!("policy line {number}: unknown parameter {key:?}")),
            }
        }
        rules.push(Rule {
            line: number,
            service: service.to_string(),
            argument,
            source: source.to_string(),
            target: target.to_string(),
            action,
            redirect,
        });
    }
    Ok(rules)
}

fn name_matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == "@anyvm" || pattern == value
}

impl Rule {
    fn matches(&self, service: &str, argument: &str, source: &str, target: &str) -> bool {
        (self.service == "*" || self.service == service)
            && self.argument.as_deref().is_none_or(|a| a == argument)
            && name_matches(&self.source, source)
            && name_matches(&self.target, target)
    }
}

/// The first matching rule decides.
pub fn evaluate(
    rules: &[Rule],
    service: &str,
    argument: &str,
    source: &str,
    target: &str,
) -> Decision {
    let Some(rule) = rules
        .iter()
        .find(|r| r.matches(service, argument, source, target))
    else {
        return Decision::Deny { line: None };
    };
    if rule.action == Action::Deny {
        return Decision::Deny {
            line: Some(rule.line),
        };
    }
    let chosen = rule.redirect.as_deref().unwrap_or(target);
    let invalid = |why: &str| Decision::Invalid {
        line: rule.line,
        why: why.to_owned(),
    };
    match chosen {
        "@default" => invalid("@default needs target= in the allowing rule"),
        "@dispvm" => invalid("@dispvm needs target=@dispvm:TEMPLATE in the allowing rule"),
        "@adminvm" => Decision::Allow {
            target: "dom0".into(),
            line: rule.line,
        },
        t if t.starts_with('@') && !t.starts_with("@dispvm:") => {
            invalid(&format!("unsupported target {t}"))
        }
        t => Decision::Allow {
            target: t.to_owned(),
            line: rule.line,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
# comment
qubes.ConnectTCP  +22  client  work     allow
qubes.ConnectTCP  *    client  work     deny
qubes.ConnectTCP  *    @anyvm  @default allow target=personal
qubes.GetDate     +    *       @default ask   default_target=work target=work
qubes.Bad         *    *       @default allow
*                 *    client  @dispvm:dvm allow
*                 *    other   *        allow
";

    #[test]
    fn first_match_wins() {
        let rules = parse(POLICY).unwrap();
        let ev = |s, a, src, t| evaluate(&rules, s, a, src, t);
        assert_eq!(
            ev("qubes.ConnectTCP", "22", "client", "work"),
            Decision::Allow {
                target: "work".into(),
                line: 2
            }
        );
        assert_eq!(
            ev("qubes.ConnectTCP", "80", "client", "work"),
            Decision::Deny { line: Some(3) }
        );
        assert_eq!(
            ev("qubes.ConnectTCP", "80", "x", "@default"),
            Decision::Allow {
                target: "personal".into(),
                line: 4
            }
        );
        assert_eq!(
            ev("qubes.GetDate", "", "client", "@default"),
            Decision::Allow {
                target: "work".into(),
                line: 5
            }
        );
        assert_eq!(
            ev("qubes.GetDate", "x", "client", "@default"),
            Decision::Deny { line: None },
            "'+' alone is the empty argument"
        );
        assert!(matches!(
            ev("qubes.Bad", "", "client", "@default"),
            Decision::Invalid { line: 6, .. }
        ));
        assert_eq!(
            ev("qubes.X", "", "client", "@dispvm:dvm"),
            Decision::Allow {
                target: "@dispvm:dvm".into(),
                line: 7
            }
        );
        assert_eq!(
            ev("qubes.X", "", "other", "@adminvm"),
            Decision::Allow {
                target: "dom0".into(),
                line: 8
            }
        );
        assert_eq!(
            ev("qubes.X", "", "client", "vault"),
            Decision::Deny { line: None }
        );
        assert_eq!(
            evaluate(&[], "a", "", "b", "c"),
            Decision::Deny { line: None }
        );
    }

    #[test]
    fn bad_lines() {
        for bad in [
            "qubes.X * client work",
            "qubes.X 22 client work allow",
            "qubes.X * client work permit",
            "qubes.X * client work allow target",
            "qubes.X * client work deny target=x",
            "qubes.X * client work allow colour=blue",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
