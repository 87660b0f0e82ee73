//! The links of one namespace kept from its link notifications (`ip monitor link`), so that
//! listing them does not dump every link again: at a thousand endpoints a dump (1000+ links
//! with their peers' namespaces) was the largest part of a reconcile that changes nothing.
//!
//! The book belongs to a [`super::NetlinkNs`] whose socket was opened subscribed to
//! `RTNLGRP_LINK` before anything was read. The kernel queues a notification on that socket
//! while it makes the change, before the call that made it returns, and answers a request on
//! the same socket after everything already queued; the connection's task reads the socket
//! in order and forwards notifications before the answers that follow them. So after any
//! answer on the socket (a *barrier*: here `RTM_GETLINK` of the loopback device), every
//! change finished before the request is in the book's channel, and applying the channel
//! makes the book what a dump at that moment would have shown. Each `RTM_NEWLINK`
//! notification carries the whole link (as a dump does) and replaces the entry;
//! `RTM_DELLINK` removes it.
//!
//! Two changes reach no notification of a link they change, and the book reads such a link
//! again ([`LinkBook::stale`]). A veth pair made with both ends in this namespace: the end
//! the kernel registers first is notified before its peer exists (peer ifindex 0). A veth's
//! peer moving to another namespace changes the other end's peer namespace id, and the
//! kernel notifies only the namespaces the peer leaves and enters: a peer leaving this
//! namespace (Docker taking a container end the agent made in the host's namespace) shows
//! here as the peer's `RTM_DELLINK`; a peer moving between two other namespaces shows
//! nowhere here, and only the next dump sees it. The agent makes peers directly in their
//! namespace and never moves them; the periodic resync's rolling share and the dump every
//! tenth resync are the net for anybody else doing so.
//!
//! The book is dumped again from scratch when it cannot be trusted: before its first use,
//! when the socket overflowed (`ENOBUFS`, which the connection forwards as an overrun),
//! when a message cannot be read, and whenever the caller asks for a fresh listing (every
//! tenth periodic resync does). A fresh listing also replaces the book.
//!
//! Layer: under [`super::link`], over rtnetlink.

use std::collections::{BTreeMap, BTreeSet};

use futures::channel::mpsc::{TryRecvError, UnboundedReceiver};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;

use super::link::ObservedLink;

/// What the connection forwards that is not an answer to a request.
pub type News = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// The links as last known, and the notifications not yet applied.
#[derive(Debug)]
pub struct LinkBook {
    news: News,
    links: BTreeMap<u32, ObservedLink>,
    /// Links that changed without a notification of their own (a veth peer that left this
    /// namespace, or one not yet made when they were notified): to be read again.
    stale: BTreeSet<u32>,
    /// Whether `links` plus the notifications in `news` stand for a dump.
    trusted: bool,
}

/// What applying the pending notifications came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The book now stands for a dump taken after the last barrier.
    Current,
    /// Something was lost or unreadable: the book must be dumped again.
    Lost,
}

impl LinkBook {
    /// A book over `news` that holds nothing yet (it is dumped before its first use).
    pub fn new(news: News) -> Self {
        Self {
            news,
            links: BTreeMap::new(),
            stale: BTreeSet::new(),
            trusted: false,
        }
    }

    /// Whether the book may stand for a dump once the pending notifications are applied.
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Applies every notification the connection has forwarded so far.
    pub fn apply_pending(&mut self) -> Applied {
        loop {
            match self.news.try_recv() {
                Ok((msg, _)) => {
                    if self.apply(msg) == Applied::Lost {
                        self.trusted = false;
                    }
                }
                // Nothing more for now.
                Err(TryRecvError::Empty) => break,
                // The connection ended: nothing more will ever come.
                Err(TryRecvError::Closed) => {
                    self.trusted = false;
                    break;
                }
            }
        }
        if self.trusted {
            Applied::Current
        } else {
            Applied::Lost
        }
    }

    /// Drops the notifications forwarded so far, before a dump is asked for: the dump will
    /// hold their effect.
    pub fn before_dump(&mut self) {
        while self.news.try_recv().is_ok() {}
    }

    /// Replaces the book with `links`, a dump asked for after [`before_dump`](Self::before_dump).
    /// The notifications forwarded since stay queued: applied on top of the dump, in order,
    /// the last one for a link is its latest change, so they leave each link as it is now.
    pub fn replace(&mut self, links: &[ObservedLink]) {
        self.links = links.iter().map(|l| (l.ifindex, l.clone())).collect();
        self.stale.clear();
        self.trusted = true;
    }

    /// The links to read again (see the module docs), forgotten here: the caller reads
    /// each, applies what is pending ([`apply_pending`](Self::apply_pending): the read was
    /// a barrier too), then [`set`](Self::set)s it.
    pub fn stale(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.stale).into_iter().collect()
    }

    /// Link `ifindex` as just read (`None`: it is gone).
    pub fn set(&mut self, ifindex: u32, link: Option<ObservedLink>) {
        match link {
            Some(l) => self.links.insert(ifindex, l),
            None => self.links.remove(&ifindex),
        };
    }

    /// The links, as of the last barrier or dump.
    pub fn links(&self) -> Vec<ObservedLink> {
        self.links.values().cloned().collect()
    }

    fn apply(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) -> Applied {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                let link = ObservedLink::from_message(&m);
                // A pair made with both ends here: the end registered first was notified
                // before its peer existed (peer ifindex 0), and is not notified again; it
                // is read again whichever end's notification comes second.
                if link.is_veth() && link.peer_ifindex == Some(0) {
                    self.stale.insert(link.ifindex);
                }
                if let (None, Some(peer)) = (link.peer_netnsid, link.peer_ifindex) {
                    let knows = |l: &ObservedLink| l.peer_ifindex == Some(link.ifindex);
                    if self.links.get(&peer).is_some_and(|p| !knows(p)) {
                        self.stale.insert(peer);
                    }
                }
                self.links.insert(link.ifindex, link);
                Applied::Current
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                let gone = m.header.index;
                self.links.remove(&gone);
                // A veth whose peer was here: the peer left (or went with the pair).
                self.stale.extend(
                    self.links
                        .values()
                        .filter(|l| l.peer_netnsid.is_none() && l.peer_ifindex == Some(gone))
                        .map(|l| l.ifindex),
                );
                Applied::Current
            }
            // Other route messages do not concern links.
            NetlinkPayload::InnerMessage(_) => Applied::Current,
            // An overrun (the socket's buffer was full and notifications were dropped), an
            // error or anything else: the book may be wrong.
            _ => Applied::Lost,
        }
    }
}
