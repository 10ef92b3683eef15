//! Handing a connected socket to another process of the same host
//! (`SCM_RIGHTS` over a Unix socket): how a runner gives the gateway a
//! connection that ends at an app inside its sandbox, so that the app's
//! traffic crosses no process between the gateway and the app.
//!
//! One exchange per connection, on a Unix stream the gateway opens: the
//! gateway writes the upstream address it would otherwise dial
//! (`127.0.0.1:40123\n`); the runner answers one byte — [`Answer::Handed`]
//! with the socket attached, [`Answer::Refused`] (nothing listens in the
//! sandbox now), or [`Answer::Dial`] (take the TCP address: not one of
//! this runner's, or the app is stopped and the runner's forwarder must
//! wake it). The gateway keeps the Unix stream open for as long as it
//! keeps the socket: its end tells the runner that the connection closed
//! (an app's idle clock counts from there).
//!
//! Both ends talk only to a process of their own user or root
//! ([`trusted_peer`]): no other user's process, and no tenant's (sandboxes
//! neither see the socket's path nor run as the runner's user), takes part.

use std::{
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{BorrowedFd, OwnedFd},
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use tokio::{io::Interest, net::UnixStream};

/// What the runner answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A socket connected to the app comes with the answer.
    Handed,
    /// The app refused the connection (it is starting or restarting).
    Refused,
    /// Dial the address over TCP instead.
    Dial,
}

impl Answer {
    const fn byte(self) -> u8 {
        match self {
            Self::Handed => b'H',
            Self::Refused => b'R',
            Self::Dial => b'T',
        }
    }

    const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'H' => Some(Self::Handed),
            b'R' => Some(Self::Refused),
            b'T' => Some(Self::Dial),
            _ => None,
        }
    }
}

/// The longest request: an upstream address (`[v6]:port`) and its newline.
pub const MAX_REQUEST: usize = 64;

/// Whether the process at the other end of `stream` runs as this
/// process's user or as root.
pub fn trusted_peer(stream: &UnixStream) -> bool {
    let own = rustix::process::geteuid().as_raw();
    stream
        .peer_cred()
        .is_ok_and(|peer| peer.uid() == own || peer.uid() == 0)
}

/// Sends `answer`, with `socket` attached when there is one.
pub async fn send(stream: &UnixStream, answer: Answer, socket: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let byte = [answer.byte()];
    let attached: Vec<BorrowedFd<'_>> = socket.into_iter().collect();
    loop {
        stream.writable().await?;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !attached.is_empty() {
                control.push(SendAncillaryMessage::ScmRights(&attached));
            }
            rustix::net::sendmsg(stream, &[IoSlice::new(&byte)], &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Receives an answer and the socket that came with it (any other
/// descriptor sent along is closed at once).
pub async fn receive(stream: &UnixStream) -> io::Result<(Answer, Option<OwnedFd>)> {
    loop {
        stream.readable().await?;
        let received = stream.try_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let message = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut socket = None;
            for ancillary in control.drain() {
                if let RecvAncillaryMessage::ScmRights(descriptors) = ancillary {
                    for descriptor in descriptors {
                        socket.get_or_insert(descriptor);
                    }
                }
            }
            if message.bytes == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok((byte[0], socket))
        });
        match received {
            Ok((byte, socket)) => {
                let answer = Answer::from_byte(byte)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a handoff answer"))?;
                return Ok((answer, socket));
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_socket_crosses_with_its_answer() {
        let (runner, gateway) = UnixStream::pair().unwrap();
        assert!(trusted_peer(&runner) && trusted_peer(&gateway));
        let (mut kept, handed) = UnixStream::pair().unwrap();
        send(&runner, Answer::Handed, Some(handed.as_fd())).await.unwrap();
        drop(handed);
        let (answer, socket) = receive(&gateway).await.unwrap();
        assert_eq!(answer, Answer::Handed);
        let std = std::os::unix::net::UnixStream::from(socket.expect("a socket came"));
        std.set_nonblocking(true).unwrap();
        let mut received = UnixStream::from_std(std).unwrap();
        received.write_all(b"through").await.unwrap();
        let mut read = [0u8; 7];
        kept.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"through");

        send(&runner, Answer::Dial, None).await.unwrap();
        let (answer, socket) = receive(&gateway).await.unwrap();
        assert_eq!((answer, socket.is_none()), (Answer::Dial, true));
        drop(runner);
        assert_eq!(
            receive(&gateway).await.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
