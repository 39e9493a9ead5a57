//! Who may send what to whom in the plain-WebSocket dialect, as plain data: an offer goes to
//! anyone logged in, an answer only to a user who offered, candidates and `leave` only
//! between users with an offer or a call between them. The tutorial's server relayed
//! anything to any name, so anyone could answer someone else's offer and get their media.

use std::collections::HashMap;

use super::protocol::PeerId;

/// Links one user keeps at most; past it the oldest that is not a call goes.
pub const MAX_LINKS: usize = 32;

/// One user's offers and calls with others.
#[derive(Debug, Default)]
pub struct Calls {
    links: HashMap<PeerId, Vec<Link>, foldhash::fast::RandomState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    other: PeerId,
    /// This user made the offer (else the other did).
    offered: bool,
    /// The offer was answered.
    call: bool,
}

/// What a message between two users may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Answer,
    Candidate,
    Leave,
}

impl Kind {
    /// The message `type` of this kind, as the tutorial's clients write it.
    pub fn parse(kind: &str) -> Option<Kind> {
        Some(match kind {
            "offer" => Kind::Offer,
            "answer" => Kind::Answer,
            "candidate" => Kind::Candidate,
            "leave" => Kind::Leave,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Offer => "offer",
            Kind::Answer => "answer",
            Kind::Candidate => "candidate",
            Kind::Leave => "leave",
        }
    }
}

impl Calls {
    /// Whether `from` may send `kind` to `to`; if so, the links change as it says (an offer
    /// opens one, an answer makes it a call, a leave ends it).
    pub fn send(&mut self, from: &PeerId, to: &PeerId, kind: Kind) -> bool {
        if from == to {
            return false;
        }
        match kind {
            Kind::Offer => {
                self.set(from, to, |l| {
                    l.offered = true;
                    l.call = false;
                });
                self.set(to, from, |l| {
                    l.offered = false;
                    l.call = false;
                });
                true
            }
            Kind::Answer => {
                // Only to the user whose offer this one received.
                let offered_to_me = self.link(from, to).is_some_and(|l| !l.offered);
                if !offered_to_me {
                    return false;
                }
                self.set(from, to, |l| l.call = true);
                self.set(to, from, |l| l.call = true);
                true
            }
            Kind::Candidate => self.link(from, to).is_some(),
            Kind::Leave => {
                if self.link(from, to).is_none() {
                    return false;
                }
                self.unlink(from, to);
                self.unlink(to, from);
                true
            }
        }
    }

    /// Forgets `peer` (it logged out): every link to it goes.
    pub fn forget(&mut self, peer: &PeerId) {
        for link in self.links.remove(peer).unwrap_or_default() {
            self.unlink(&link.other, peer);
        }
    }

    fn link(&self, from: &PeerId, to: &PeerId) -> Option<&Link> {
        self.links.get(from)?.iter().find(|l| &l.other == to)
    }

    /// Updates (or opens) `from`'s link to `to`.
    fn set(&mut self, from: &PeerId, to: &PeerId, update: impl FnOnce(&mut Link)) {
        let full = self
            .links
            .get(from)
            .filter(|links| links.len() >= MAX_LINKS && !links.iter().any(|l| &l.other == to));
        // Full: the oldest link that is not a call goes, from both sides.
        if let Some(links) = full {
            let oldest = links.iter().position(|l| !l.call).unwrap_or(0);
            let other = links[oldest].other.clone();
            self.unlink(from, &other);
            self.unlink(&other, from);
        }
        let links = self.links.entry(from.clone()).or_default();
        let at = match links.iter().position(|l| &l.other == to) {
            Some(at) => at,
            None => {
                links.push(Link {
                    other: to.clone(),
                    offered: false,
                    call: false,
                });
                links.len() - 1
            }
        };
        update(&mut links[at]);
    }

    fn unlink(&mut self, from: &PeerId, to: &PeerId) {
        if let Some(links) = self.links.get_mut(from) {
            links.retain(|l| &l.other != to);
            if links.is_empty() {
                self.links.remove(from);
            }
        }
    }

    /// Users with any link, for tests of what is forgotten.
    #[cfg(test)]
    fn users(&self) -> usize {
        self.links.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (PeerId, PeerId, PeerId) {
        (
            PeerId::test("alice"),
            PeerId::test("bob"),
            PeerId::test("mallory"),
        )
    }

    #[test]
    fn a_call_is_an_offer_then_an_answer_and_candidates_both_ways() {
        let (a, b, _) = ids();
        let mut calls = Calls::default();
        assert!(calls.send(&a, &b, Kind::Offer));
        // Trickle ICE: candidates follow the offer before the answer, both ways.
        assert!(calls.send(&a, &b, Kind::Candidate));
        assert!(calls.send(&b, &a, Kind::Candidate));
        assert!(calls.send(&b, &a, Kind::Answer));
        assert!(calls.send(&a, &b, Kind::Candidate));
        assert!(calls.send(&a, &b, Kind::Leave));
        assert!(!calls.send(&b, &a, Kind::Candidate));
        assert_eq!(calls.users(), 0);
    }

    #[test]
    fn nobody_answers_an_offer_made_to_someone_else() {
        let (a, b, m) = ids();
        let mut calls = Calls::default();
        assert!(calls.send(&a, &b, Kind::Offer));
        assert!(!calls.send(&m, &a, Kind::Answer));
        assert!(!calls.send(&m, &a, Kind::Candidate));
        assert!(!calls.send(&m, &b, Kind::Candidate));
        assert!(!calls.send(&m, &a, Kind::Leave));
        // The offerer cannot answer its own offer either.
        assert!(!calls.send(&a, &b, Kind::Answer));
        assert!(calls.send(&b, &a, Kind::Answer));
        assert!(!calls.send(&a, &a, Kind::Offer));
    }

    #[test]
    fn a_user_who_logs_out_leaves_no_links() {
        let (a, b, m) = ids();
        let mut calls = Calls::default();
        calls.send(&a, &b, Kind::Offer);
        calls.send(&m, &b, Kind::Offer);
        calls.forget(&b);
        assert_eq!(calls.users(), 0);
        assert!(!calls.send(&a, &b, Kind::Candidate));
    }

    #[test]
    fn offers_from_many_do_not_push_out_a_call() {
        let (a, b, _) = ids();
        let mut calls = Calls::default();
        calls.send(&a, &b, Kind::Offer);
        calls.send(&b, &a, Kind::Answer);
        for i in 0..(3 * MAX_LINKS) {
            let spammer = PeerId::test(&format!("s{i}"));
            calls.send(&spammer, &b, Kind::Offer);
        }
        assert!(calls.send(&a, &b, Kind::Candidate));
        assert!(calls.links[&b].len() <= MAX_LINKS);
    }
}
