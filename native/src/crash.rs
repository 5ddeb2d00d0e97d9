//! What happens to a request whose worker died under it: `src/anycore/router/crash.py`'s
//! one rule, ported (read its docstring for the theory). Pure: `worker::lost` applies it.
//!
//! - answered already, or its client is gone: `Done`;
//! - blame is shared among the requests the dead worker was running (1/n each); past two
//!   workers' worth it is `Quarantine`d: 502, and identical requests (method, raw path,
//!   query) are refused for `QUARANTINE_TTL` seconds;
//! - else `Retry`d once at the head of the queue when that is safe: GET/HEAD/OPTIONS,
//!   nothing of the response sent, the request replayable (it had no body: the gateway
//!   keeps its Req frame, nothing of a body was consumed), first attempt;
//! - else `Fail`: 502, saying the request may or may not have taken effect.

pub const QUARANTINE_AT: f64 = 2.0; // workers' worth of blame
pub const MAX_ATTEMPTS: u8 = 2;
pub const QUARANTINE_TTL: f64 = 300.0; // seconds

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Retry,
    Quarantine,
    Fail,
}

impl Outcome {
    /// The name in `router/crash.py` (and in the `RequestCrashed` message).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Retry => "retry",
            Outcome::Quarantine => "quarantine",
            Outcome::Fail => "fail",
        }
    }
}

/// What the rule needs to know of a request whose worker died.
#[derive(Clone, Copy, Debug)]
pub struct Crashed<'a> {
    pub method: &'a str,
    pub answered: bool,
    pub response_started: bool,
    pub replayable: bool,
    pub attempts: u8,
    pub blame: f64, // its share of the blame so far, this death included
}

pub fn safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

pub fn retryable(c: &Crashed) -> bool {
    safe(c.method) && !c.response_started && c.replayable && c.attempts < MAX_ATTEMPTS
}

pub fn outcome(c: &Crashed) -> Outcome {
    if c.answered {
        Outcome::Done
    } else if c.blame >= QUARANTINE_AT - 1e-9 {
        Outcome::Quarantine
    } else if retryable(c) {
        Outcome::Retry
    } else {
        Outcome::Fail
    }
}

/// The 502's detail for `Fail`.
pub fn why_not_retried(response_started: bool) -> &'static str {
    if response_started {
        "response already started"
    } else {
        "unsafe to retry: not GET/HEAD/OPTIONS or body consumed"
    }
}

/// The method as a `&'static str` when the rule or a detail names it; "" for others.
pub fn known_method(m: &[u8]) -> &'static str {
    match m {
        b"GET" => "GET",
        b"HEAD" => "HEAD",
        b"OPTIONS" => "OPTIONS",
        b"POST" => "POST",
        b"PUT" => "PUT",
        b"PATCH" => "PATCH",
        b"DELETE" => "DELETE",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, answered: bool, started: bool, replayable: bool, attempts: u8, blame: f64) -> Crashed<'_> {
        Crashed { method, answered, response_started: started, replayable, attempts, blame }
    }

    #[test]
    fn the_rule_as_router_crash_py_states_it() {
        use Outcome::*;
        let table = [
            (c("GET", true, false, true, 1, 1.0), Done),
            (c("GET", true, false, true, 2, 2.0), Done), // answered beats quarantine
            (c("GET", false, false, true, 1, 1.0), Retry),
            (c("HEAD", false, false, true, 1, 0.5), Retry),
            (c("OPTIONS", false, false, true, 1, 0.5), Retry),
            (c("GET", false, false, true, 2, 1.5), Fail), // second attempt: no third
            (c("GET", false, true, true, 1, 1.0), Fail),  // response started
            (c("GET", false, false, false, 1, 1.0), Fail), // body consumed
            (c("POST", false, false, true, 1, 1.0), Fail),
            (c("GET", false, false, true, 2, 2.0), Quarantine),
            (c("POST", false, false, false, 2, 1.0 + 1.0 - 1e-12), Quarantine),
            (c("GET", false, true, true, 2, 2.5), Quarantine),
        ];
        for (crashed, expected) in table {
            assert_eq!(outcome(&crashed), expected, "{crashed:?}");
        }
    }

    #[test]
    fn details_and_methods() {
        assert_eq!(why_not_retried(true), "response already started");
        assert!(why_not_retried(false).contains("unsafe to retry"));
        assert_eq!((known_method(b"GET"), known_method(b"BREW")), ("GET", ""));
        assert_eq!(Outcome::Quarantine.name(), "quarantine");
    }
}
