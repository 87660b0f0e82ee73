//! "A netlink handle in namespace X": an rtnetlink connection and an ioctl socket that both
//! live in one network namespace, driven from the agent's tokio runtime.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. So
//! [`NetlinkNs::enter`] starts a short-lived std thread, `setns(2)`s it into the namespace
//! (what `ip netns exec` does to its process), opens the sockets there and hands them back;
//! the thread then exits. The connection is driven by a tokio task as usual. No tokio worker
//! thread ever changes namespace, so nothing else the runtime runs can end up in the wrong
//! one.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};
use rtnetlink::sys::AsyncSocket;
use tokio::task::JoinHandle;
use tracing::debug;

use super::error::{Error, Result};
use super::link_book::{LinkBook, News};
use super::target::NetnsFile;

/// How errors name the namespace the agent itself runs in.
pub const OWN_NAMESPACE: &str = "the agent's namespace";

/// An rtnetlink connection plus a datagram socket for ethtool ioctls, both opened inside one
/// network namespace. Dropping it closes both and stops the connection's task.
#[derive(Debug)]
pub struct NetlinkNs {
    label: String,
    handle: rtnetlink::Handle,
    ioctl_socket: OwnedFd,
    driver: JoinHandle<()>,
    /// The namespace's links kept from notifications, when the socket was opened subscribed
    /// to them ([`NetlinkNs::own_watching_links`], [`NetlinkNs::enter_watching_links`]).
    book: Option<tokio::sync::Mutex<LinkBook>>,
}

impl NetlinkNs {
    /// Opens the sockets in the namespace the calling thread is in: the agent's own (the
    /// agent never moves its threads). Must be called inside a tokio runtime.
    pub fn own() -> Result<Self> {
        Self::own_opened(false)
    }

    /// Like [`own`](Self::own), with the netlink socket subscribed to link notifications
    /// from the start, so that [`super::link::list_known`] can keep the links from them.
    pub fn own_watching_links() -> Result<Self> {
        Self::own_opened(true)
    }

    fn own_opened(watch_links: bool) -> Result<Self> {
        let (driver, handle, ioctl_socket, news) = open_sockets(OWN_NAMESPACE, watch_links)?;
        Ok(Self {
            label: OWN_NAMESPACE.to_string(),
            handle,
            ioctl_socket,
            driver,
            book: news.map(|n| tokio::sync::Mutex::new(LinkBook::new(n))),
        })
    }

    /// Opens the sockets inside `ns` from a dedicated thread (see the module docs). Must be
    /// called inside a tokio runtime.
    pub async fn enter(ns: &NetnsFile) -> Result<Self> {
        Self::enter_opened(ns, false).await
    }

    /// Like [`enter`](Self::enter), with the netlink socket subscribed to link
    /// notifications from the start (see [`own_watching_links`](Self::own_watching_links)).
    pub async fn enter_watching_links(ns: &NetnsFile) -> Result<Self> {
        Self::enter_opened(ns, true).await
    }

    async fn enter_opened(ns: &NetnsFile, watch_links: bool) -> Result<Self> {
        let label = ns.label().to_string();
        let socket_err = |what, source| Error::Socket {
            ns: label.clone(),
            what,
            source,
        };
        let file = ns
            .file()
            .try_clone()
            .map_err(|e| socket_err("namespace file descriptor", e))?;
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name("ovl-netns".into())
            .spawn(move || {
                let opened = setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|errno| Error::Enter {
                        target: thread_label.clone(),
                        errno,
                    })
                    .and_then(|()| {
                        // The netlink socket registers with the runtime's reactor as it is
                        // created, and its driver task is spawned there, so the runtime must
                        // be current on this thread.
                        let _entered = runtime.enter();
                        open_sockets(&thread_label, watch_links)
                    });
                // The receiver only goes away if the caller was cancelled; then the sockets
                // are closed here and the connection's driver is stopped.
                if let Err(Ok((driver, _, _, _))) = tx.send(opened) {
                    driver.abort();
                }
            })
            .map_err(|e| socket_err("helper thread", e))?;
        let (driver, handle, ioctl_socket, news) = rx.await.map_err(|_| {
            socket_err(
                "netlink socket",
                std::io::Error::other("the namespace helper thread ended without an answer"),
            )
        })??;
        Ok(Self {
            label,
            handle,
            ioctl_socket,
            driver,
            book: news.map(|n| tokio::sync::Mutex::new(LinkBook::new(n))),
        })
    }

    /// The links kept from notifications, if this socket is subscribed to them.
    pub(super) fn link_book(&self) -> Option<&tokio::sync::Mutex<LinkBook>> {
        self.book.as_ref()
    }

    /// How errors name this namespace.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A handle for rtnetlink requests; requests run in this namespace.
    pub fn rtnl(&self) -> rtnetlink::Handle {
        self.handle.clone()
    }

    /// An `AF_INET` datagram socket created in this namespace, for `SIOCETHTOOL` and other
    /// ioctls that name an interface (the kernel looks the name up in the socket's namespace).
    pub fn ioctl_socket(&self) -> &OwnedFd {
        &self.ioctl_socket
    }

    /// The id this namespace gives `other` (`ip netns list-id`, `RTM_GETNSID`), or `None`
    /// when it has none yet. Link dumps name a veth peer's namespace by this id.
    pub async fn nsid_of(&self, other: &NetnsFile) -> Result<Option<i32>> {
        let op = "get nsid of";
        let mut msg = NsidMessage::default();
        let fd = u32::try_from(other.file().as_raw_fd()).map_err(|_| Error::Unexpected {
            ns: self.label.clone(),
            link: other.label().to_string(),
            op,
            problem: "negative file descriptor".into(),
        })?;
        msg.attributes.push(NsidAttribute::Fd(fd));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut responses = handle
            .request(req)
            .map_err(|e| Error::netlink(&self.label, other.label(), op, e))?;
        while let Some(reply) = responses.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    let id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    });
                    return Ok(id.filter(|id| *id >= 0));
                }
                NetlinkPayload::Error(e) => {
                    return Err(Error::netlink(
                        &self.label,
                        other.label(),
                        op,
                        rtnetlink::Error::NetlinkError(e),
                    ))
                }
                _ => {}
            }
        }
        Err(Error::Unexpected {
            ns: self.label.clone(),
            link: other.label().to_string(),
            op,
            problem: "no RTM_NEWNSID answer".into(),
        })
    }
}

impl Drop for NetlinkNs {
    fn drop(&mut self) {
        // The connection would otherwise wait for unsolicited messages forever.
        self.driver.abort();
    }
}

type Opened = (JoinHandle<()>, rtnetlink::Handle, OwnedFd, Option<News>);

/// How much the kernel may queue on a socket subscribed to link notifications before it
/// drops them (`ENOBUFS`, after which the links are dumped again): a burst of a thousand
/// veths made at once is about 1.5 MB of notifications, and the connection's task empties
/// the socket as it goes.
const NEWS_BUFFER: usize = 8 << 20;

/// Opens both sockets in the calling thread's namespace and spawns the netlink connection's
/// driver on the current runtime; with `watch_links`, the netlink socket is subscribed to
/// link notifications (`RTNLGRP_LINK`) before any request goes out on it.
fn open_sockets(label: &str, watch_links: bool) -> Result<Opened> {
    let socket_err = |what, source| Error::Socket {
        ns: label.to_string(),
        what,
        source,
    };
    let (mut conn, handle, unsolicited) =
        rtnetlink::new_connection().map_err(|e| socket_err("rtnetlink socket", e))?;
    let news = if watch_links {
        let socket = conn.socket_mut().socket_mut();
        socket
            .add_membership(RTNLGRP_LINK)
            .map_err(|e| socket_err("link notifications", e))?;
        // Past `net.core.rmem_max` only with CAP_NET_ADMIN (SO_RCVBUFFORCE); a smaller
        // buffer only means an earlier dump again.
        if let Err(e) = setsockopt(&*socket, sockopt::RcvBufForce, &NEWS_BUFFER) {
            debug!("cannot enlarge the buffer of the link notification socket: {e}");
        }
        Some(unsolicited)
    } else {
        None
    };
    let ioctl_socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::Socket {
        ns: label.to_string(),
        what: "ioctl socket",
        source: e.into(),
    })?;
    Ok((tokio::spawn(conn), handle, ioctl_socket, news))
}

/// `RTNLGRP_LINK` (linux/rtnetlink.h): link notifications.
const RTNLGRP_LINK: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entering_a_namespace_of_another_kind_is_refused() {
        let mnt = NetnsFile::open("path:/proc/self/ns/mnt", "/proc/self/ns/mnt").unwrap();
        let err = NetlinkNs::enter(&mnt).await.unwrap_err();
        assert!(matches!(err, Error::Enter { .. }), "{err:?}");
        assert!(err.to_string().contains("not a network namespace"), "{err}");
    }

    #[tokio::test]
    async fn own_namespace_answers_netlink() {
        let ns = NetlinkNs::own().unwrap();
        let lo = super::super::link::by_name(&ns, "lo")
            .await
            .unwrap()
            .expect("lo exists");
        assert_eq!(lo.ifindex, 1);
        assert!(super::super::link::by_name(&ns, "ovl-no-such0")
            .await
            .unwrap()
            .is_none());
    }
}
