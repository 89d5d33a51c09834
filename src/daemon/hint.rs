//! After a call refused by dom0 (status 126): the policy line that would
//! allow it, in the format of `/etc/qubes/policy.d/30-user.policy`, logged
//! once per route (a listener's, or a SOCKS destination's), not once per
//! connection.

use log::info;

use super::report::Route;
use crate::manage::policy;

/// Routes hinted at most: past this many, refusals get no more hints (a
/// SOCKS client could name a new qube or port for every connection).
const MAX_HINTS: usize = 64;

/// The lines logged so far, and this qube's name once it is needed.
#[derive(Default)]
pub(super) struct Hints {
    /// `qubesdb-read /name`, run at the first refusal (a process of its own:
    /// never at start-up, and never again).
    source: Option<String>,
    logged: Vec<String>,
}

impl Hints {
    /// A call of `route` was refused: its policy line, unless logged already.
    pub(super) fn refused(&mut self, route: Route) {
        if self.logged.len() >= MAX_HINTS {
            return;
        }
        let source = self.source.get_or_insert_with(|| {
            policy::source().unwrap_or_else(|| policy::UNKNOWN_SOURCE.to_owned())
        });
        let line = policy::line(source, route.target.as_str(), route.call.as_str());
        if self.logged.contains(&line) {
            return;
        }
        let unknown = if source == policy::UNKNOWN_SOURCE {
            format!(" ({} stands for this qube's name)", policy::UNKNOWN_SOURCE)
        } else {
            String::new()
        };
        info!(
            "{} {} was refused; if it should be allowed, dom0 needs this line in \
             /etc/qubes/policy.d/30-user.policy{unknown}: {line}",
            route.target, route.call
        );
        self.logged.push(line);
    }
}
