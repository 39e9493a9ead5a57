//! `Dialect`: what each signaling dialect offers the rest of the server, so that the
//! state, the admin API, the metrics, TURN's membership check and a reload go over every
//! dialect without naming one. `signaling::dialects` is the one place that lists them: a
//! new dialect is its own module implementing this trait (with its name, its `Space` in TURN
//! credentials, its message types for metrics), plus one line there.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;

use super::host::Host;
use super::room::RoomActivity;
use super::stats::Counts;
use crate::config::SignalingConfig;
use crate::model::{PeerId, PeerInfo, RoomId, Scope};
use crate::turn::Membership;

/// One signaling dialect: its endpoints, its peers and rooms, and its live limits.
pub trait Dialect: Send + Sync + fmt::Debug {
    /// Its name in metrics and the admin API (`native`, `plain_ws`, `socketio`).
    fn name(&self) -> &'static str;
    /// Mounts its endpoints on `router`: routes, or a layer around what is mounted before.
    fn mount(self: Arc<Self>, router: Router, app: &Arc<Host>) -> Router;
    /// Every peer right now, with the scope (dialect and room) its credentials name;
    /// members of a room in the order they joined, rooms sorted by name.
    fn peers(&self) -> Vec<(Scope, PeerInfo)>;
    /// What its rooms and members have done so far (the plain-WebSocket dialect's users are
    /// the members of one room, its directory).
    fn activity(&self) -> Vec<RoomActivity>;
    /// Rooms and peers right now, and its counters.
    fn counts(&self) -> Counts;
    /// Removes every member of `room` and disconnects their sockets; returns who was removed.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId>;
    /// Removes `peer` (its room is told) and disconnects its socket; returns the scope it was
    /// in and its client's address.
    fn kick(&self, peer: &PeerId) -> Option<(Scope, Option<IpAddr>)>;
    /// Whether `peer` is still in `scope`, for its TURN credential; `false` for another
    /// dialect's scope.
    fn is_member(&self, scope: &Scope, peer: &PeerId) -> bool;
    /// Applies reloaded limits (room capacity, room count) to what comes next.
    fn set_limits(&self, cfg: &SignalingConfig);
}

/// Every dialect of this server, in the order they are mounted.
#[derive(Clone, Debug)]
pub struct Dialects(Arc<[Arc<dyn Dialect>]>);

impl Dialects {
    pub fn of(dialects: Vec<Arc<dyn Dialect>>) -> Dialects {
        Dialects(dialects.into())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Dialect>> {
        self.0.iter()
    }

    /// The dialect of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Dialect>> {
        self.0.iter().find(|d| d.name() == name)
    }

    /// Whether `peer` is still in `scope`, asked of every dialect (each answers only for its
    /// own scopes, so a peer id of one dialect never keeps a credential of another alive).
    pub fn membership(&self) -> Membership {
        let dialects = self.clone();
        Arc::new(move |scope: &Scope, peer: &PeerId| {
            dialects.iter().any(|d| d.is_member(scope, peer))
        })
    }

    /// Each dialect's name and counts.
    pub fn counts(&self) -> Vec<(&'static str, Counts)> {
        self.iter().map(|d| (d.name(), d.counts())).collect()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::signaling::legacy::Directory;
    use crate::signaling::outbox::Outbox;
    use crate::signaling::registry::{Event, Member};
    use crate::signaling::signal::Eviction;
    use crate::signaling::sio::SioRooms;
    use crate::signaling::ws::Native;

    /// A member that takes every event and does nothing.
    #[derive(Debug)]
    struct Quiet;

    impl Member for Quiet {
        fn deliver(&self, _: Event<'_>) {}
        fn evict(&self, _: Eviction) {}
        fn client(&self) -> std::net::IpAddr {
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    }

    fn outbox() -> Outbox {
        Outbox {
            queue: Arc::default(),
            signal: Arc::default(),
            direct: None,
        }
    }

    #[test]
    fn membership_is_checked_in_exactly_the_credential_s_dialect() {
        let cfg = SignalingConfig::default();
        let native = Arc::new(Native::new(&cfg));
        let legacy = Arc::new(Directory::default());
        let sio = Arc::new(SioRooms::new(10, 10));
        let dialects = Dialects::of(vec![native.clone(), legacy.clone(), sio]);
        let member = dialects.membership();
        // A user of the plain-WebSocket dialect, and a native peer in the room named like
        // the pseudo-room that dialect's credentials used to name.
        let user = PeerId::random();
        let alice = PeerInfo {
            id: user.clone(),
            name: Some("alice".to_owned()),
        };
        assert!(
            legacy
                .login(
                    alice,
                    Arc::new(outbox()),
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    Box::new(|_| {}),
                )
                .decided()
                .is_ok()
        );
        let room = RoomId::parse("_ws-legacy").unwrap();
        let id = PeerId::random();
        let info = PeerInfo {
            id: id.clone(),
            name: None,
        };
        native
            .registry()
            .join(
                info,
                &room,
                crate::signaling::room::Terms::default(),
                Arc::new(Quiet),
                Box::new(|_| {}),
            )
            .decided()
            .unwrap();

        assert!(member(
            &Scope::whole(crate::signaling::legacy::SPACE),
            &user
        ));
        assert!(member(&Scope::native(room.clone()), &id));
        // Neither keeps a credential of another dialect alive.
        assert!(!member(&Scope::native(room.clone()), &user));
        assert!(!member(&Scope::whole(crate::signaling::legacy::SPACE), &id));
        assert!(!member(
            &Scope::in_room(crate::signaling::sio::SPACE, room.clone()),
            &id
        ));
        // A kick through the dialect ends it, as a logout does.
        assert_eq!(
            legacy.kick(&user),
            Some((
                Scope::whole(crate::signaling::legacy::SPACE),
                Some(std::net::Ipv4Addr::LOCALHOST.into())
            ))
        );
        assert!(!member(
            &Scope::whole(crate::signaling::legacy::SPACE),
            &user
        ));
        assert_eq!(
            dialects
                .counts()
                .iter()
                .map(|(_, c)| c.peers)
                .sum::<usize>(),
            1
        );
    }
}
