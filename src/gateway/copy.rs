//! Copying a proxied connection both ways. Unlike
//! `tokio::io::copy_bidirectional`, each direction gathers everything that
//! is already readable (several TLS records) before it writes, so bulk
//! transfers make one large write instead of one per record, and the bytes
//! carried are known however the connection ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at once, each way: four full TLS records.
pub const BUFFER: usize = 64 * 1024;

/// One direction's buffer and progress.
struct Direction {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reader reached end of stream.
    eof: bool,
    /// The writer was shut down after `eof`: this direction is finished.
    done: bool,
    carried: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            carried: 0,
        }
    }

    /// Moves bytes from `reader` to `writer` until one of them would block;
    /// ready when the reader has ended and the writer is shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start == self.end && !self.eof {
                self.start = 0;
                self.end = 0;
                // Gather what is readable now, up to a full buffer.
                while self.end < self.buf.len() {
                    let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
                    match reader.as_mut().poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            self.eof = true;
                            break;
                        }
                        Poll::Ready(Ok(())) => self.end += rb.filled().len(),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if self.end == 0 => {
                            // Nothing to write: push out what an earlier
                            // write may have left buffered, then wait.
                            ready!(writer.as_mut().poll_flush(cx))?;
                            return Poll::Pending;
                        }
                        Poll::Pending => break,
                    }
                }
            }
            while self.start < self.end {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.carried += n as u64;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
            }
        }
    }
}

/// Copies between `a` and `b` both ways until both directions have ended
/// or either fails; [`Copy::carried`] tells the bytes moved so far.
pub struct Copy<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl<'a, A, B> Copy<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    /// A copy between `a` and `b` that starts when first polled.
    pub fn new(a: &'a mut A, b: &'a mut B) -> Self {
        Copy {
            a,
            b,
            a_to_b: Direction::new(),
            b_to_a: Direction::new(),
        }
    }

    /// Bytes moved in both directions so far.
    pub fn carried(&self) -> u64 {
        self.a_to_b.carried + self.b_to_a.carried
    }
}

impl<A, B> Future for Copy<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let forward = this
            .a_to_b
            .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))?;
        let back = this
            .b_to_a
            .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))?;
        match (forward, back) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `data` then closes its sending side, while reading to the end.
    async fn exchange(stream: tokio::io::DuplexStream, data: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(stream);
        let mut got = Vec::new();
        let write = async {
            w.write_all(data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let read = async { r.read_to_end(&mut got).await.unwrap() };
        tokio::join!(write, read);
        got
    }

    #[tokio::test]
    async fn carries_both_ways_and_propagates_end_of_stream() {
        let (client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, server) = tokio::io::duplex(1024);
        let copy = tokio::spawn(async move {
            let mut copy = Copy::new(&mut proxy_a, &mut proxy_b);
            let r = (&mut copy).await;
            (r.is_ok(), copy.carried())
        });
        let up: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let down: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move { exchange(server, &down2).await });
        let got = exchange(client, &up2).await;
        assert_eq!(got, down);
        assert_eq!(server_side.await.unwrap(), up);
        assert_eq!(copy.await.unwrap(), (true, 350_000));
    }

    #[tokio::test]
    async fn counts_what_was_carried_when_a_side_fails() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, server) = tokio::io::duplex(64);
        client.write_all(b"hello").await.unwrap();
        drop(server);
        let mut copy = Copy::new(&mut proxy_a, &mut proxy_b);
        let r = (&mut copy).await;
        assert!(r.is_err(), "writing to a closed peer fails");
        assert_eq!(copy.carried(), 0);
        drop(copy);
        // The other way: data arrives, then the writer side breaks.
        let (mut client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, mut server) = tokio::io::duplex(64);
        server.write_all(b"from server").await.unwrap();
        let mut copy = Copy::new(&mut proxy_a, &mut proxy_b);
        let mut got = [0u8; 11];
        tokio::select! {
            _ = &mut copy => panic!("nothing ended yet"),
            r = client.read_exact(&mut got) => { r.unwrap(); }
        }
        assert_eq!(&got, b"from server");
        assert_eq!(copy.carried(), 11);
    }
}
