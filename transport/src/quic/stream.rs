//! Frame reader and writer over any tokio byte stream: a QUIC stream in production, an
//! in-memory `tokio::io::duplex` in tests.
//!
//! Recovery policy. The length prefix tells the reader where the next frame starts, so a
//! frame whose payload exceeds [`Limits::max_payload`] or whose header is malformed is read
//! past (into the reusable buffer, in bounded chunks) and reported as
//! [`LinkError::Rejected`]: the same stream keeps serving later frames, and the receiver may
//! answer with an [`FrameKind::Error`] frame. A header length beyond [`Limits::max_header`]
//! means the byte stream itself is garbage, so it is [`LinkError::Desync`] and the stream
//! must be dropped (reconnecting is the caller's job).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{
    ErrorCode, Frame, FrameError, FrameHeader, FrameKind, Limits, Prefix, PREFIX_LEN,
};

/// Largest chunk read at once while skipping a rejected payload: bounds the buffer growth a
/// peer can cause with an oversized frame.
const SKIP_CHUNK: usize = 64 * 1024;

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The frame was read past and dropped; the stream is still in sync and usable.
    #[error("frame rejected, stream still usable: {error}")]
    Rejected {
        /// What was wrong with it.
        #[source]
        error: FrameError,
        /// Its header, when it decoded (so the answer can name the session).
        header: Option<FrameHeader>,
    },
    /// The byte stream cannot be trusted any more (absurd header length); drop the stream.
    #[error("stream out of sync: {0}")]
    Desync(#[source] FrameError),
    /// A frame could not be encoded (shape does not match payload); nothing was written.
    #[error("frame not sent: {0}")]
    Encode(#[source] FrameError),
    /// The peer finished its stream in the middle of a frame.
    #[error("stream ended mid-frame")]
    Truncated,
    /// The peer closed the connection or stream, or this side already did.
    #[error("link closed: {0}")]
    Closed(String),
    /// The peer stopped answering for longer than the idle timeout.
    #[error("link timed out: peer unresponsive")]
    TimedOut,
    /// The peer reset or stopped the stream with an application code.
    #[error("stream reset by peer (code {0})")]
    Reset(u64),
    /// Connection setup failed (TLS, verification, version or address problems).
    #[error("connection setup failed: {0}")]
    Connect(String),
    /// The peer opened a stream that does not speak this protocol.
    #[error("peer is not a shoal link: {0}")]
    Handshake(String),
    /// The peer did not prove it holds this cluster's key, or the two ends disagree on
    /// whether a key is needed at all.
    #[error("peer not admitted: {0}")]
    Unauthenticated(String),
    /// Another I/O failure.
    #[error("link I/O error: {0}")]
    Io(#[source] io::Error),
}

impl LinkError {
    /// Whether the link can keep being used after this error.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, LinkError::Rejected { .. })
    }

    /// Maps an I/O error from a stream, recognising QUIC's own errors underneath it.
    pub fn from_io(err: io::Error) -> Self {
        if let Some(inner) = err.get_ref() {
            if let Some(e) = inner.downcast_ref::<quinn::ReadError>() {
                return Self::from_read(e.clone());
            }
            if let Some(e) = inner.downcast_ref::<quinn::WriteError>() {
                return Self::from_write(e.clone());
            }
        }
        match err.kind() {
            io::ErrorKind::UnexpectedEof => LinkError::Truncated,
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => LinkError::Closed(err.to_string()),
            io::ErrorKind::TimedOut => LinkError::TimedOut,
            _ => LinkError::Io(err),
        }
    }

    /// Maps a QUIC connection error.
    pub fn from_connection(err: quinn::ConnectionError) -> Self {
        match err {
            quinn::ConnectionError::TimedOut => LinkError::TimedOut,
            other => LinkError::Closed(other.to_string()),
        }
    }

    fn from_read(err: quinn::ReadError) -> Self {
        match err {
            quinn::ReadError::Reset(code) => LinkError::Reset(code.into_inner()),
            quinn::ReadError::ConnectionLost(e) => Self::from_connection(e),
            other => LinkError::Closed(other.to_string()),
        }
    }

    fn from_write(err: quinn::WriteError) -> Self {
        match err {
            quinn::WriteError::Stopped(code) => LinkError::Reset(code.into_inner()),
            quinn::WriteError::ConnectionLost(e) => Self::from_connection(e),
            other => LinkError::Closed(other.to_string()),
        }
    }
}

/// Writes frames to a byte stream: the stack-encoded prefix and header, then the payload
/// as given, without concatenating them.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte stream.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// Sends one frame.
    pub async fn send(&mut self, header: &FrameHeader, payload: &[u8]) -> Result<(), LinkError> {
        let prefix = header
            .encode_prefix(payload.len())
            .map_err(LinkError::Encode)?;
        self.inner
            .write_all(prefix.as_bytes())
            .await
            .map_err(LinkError::from_io)?;
        if !payload.is_empty() {
            self.inner
                .write_all(payload)
                .await
                .map_err(LinkError::from_io)?;
        }
        Ok(())
    }

    /// Answers a rejected frame with an [`FrameKind::Error`] frame carrying `message`.
    pub async fn send_error(
        &mut self,
        code: ErrorCode,
        session: u64,
        message: &str,
    ) -> Result<(), LinkError> {
        let header = FrameHeader::new(FrameKind::Error(code), session, 0);
        self.send(&header, message.as_bytes()).await
    }

    /// The underlying stream, e.g. to finish it or (in tests) to write raw bytes.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Unwraps the underlying stream.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Reads frames from a byte stream into one reusable payload buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    limits: Limits,
    header: Vec<u8>,
    /// Grows to the largest payload seen and never shrinks, so steady-state reads neither
    /// allocate nor zero-fill.
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream; every frame is checked against `limits`.
    pub fn new(inner: R, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            header: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Receives the next frame. `Ok(None)` means the peer finished the stream cleanly at a
    /// frame boundary. The frame borrows the reader's buffer until the next call.
    pub async fn recv(&mut self) -> Result<Option<Frame<'_>>, LinkError> {
        let mut prefix = [0u8; PREFIX_LEN];
        if !self.read_prefix(&mut prefix).await? {
            return Ok(None);
        }
        let prefix = Prefix::parse(prefix);
        if prefix.header_len > self.limits.max_header {
            return Err(LinkError::Desync(FrameError::HeaderTooLarge {
                len: prefix.header_len,
                max: self.limits.max_header,
            }));
        }
        self.header.resize(prefix.header_len as usize, 0);
        self.read_exact_header().await?;
        let header = FrameHeader::decode(&self.header);
        if let Err(error) = self.limits.check(prefix) {
            self.skip(prefix.payload_len as usize).await?;
            return Err(LinkError::Rejected {
                error,
                header: header.ok(),
            });
        }
        let header = match header {
            Ok(header) => header,
            Err(error) => {
                self.skip(prefix.payload_len as usize).await?;
                return Err(LinkError::Rejected {
                    error,
                    header: None,
                });
            }
        };
        let len = prefix.payload_len as usize;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let payload = &mut self.buf[..len];
        read_exact(&mut self.inner, payload).await?;
        Ok(Some(Frame { header, payload }))
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads the prefix; `false` on a clean end of stream before its first byte.
    async fn read_prefix(&mut self, prefix: &mut [u8; PREFIX_LEN]) -> Result<bool, LinkError> {
        let mut filled = 0;
        while filled < PREFIX_LEN {
            let n = self
                .inner
                .read(&mut prefix[filled..])
                .await
                .map_err(LinkError::from_io)?;
            if n == 0 {
                return if filled == 0 {
                    Ok(false)
                } else {
                    Err(LinkError::Truncated)
                };
            }
            filled += n;
        }
        Ok(true)
    }

    async fn read_exact_header(&mut self) -> Result<(), LinkError> {
        read_exact(&mut self.inner, &mut self.header).await
    }

    /// Reads and drops `len` bytes through the reusable buffer, at most [`SKIP_CHUNK`] at once.
    async fn skip(&mut self, mut len: usize) -> Result<(), LinkError> {
        let chunk = len.min(SKIP_CHUNK);
        if self.buf.len() < chunk {
            self.buf.resize(chunk, 0);
        }
        while len > 0 {
            let n = len.min(self.buf.len());
            read_exact(&mut self.inner, &mut self.buf[..n]).await?;
            len -= n;
        }
        Ok(())
    }
}

async fn read_exact<R: AsyncRead + Unpin>(inner: &mut R, buf: &mut [u8]) -> Result<(), LinkError> {
    match inner.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) => Err(LinkError::from_io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn header(seq: u64, _cols: u32) -> FrameHeader {
        FrameHeader::new(FrameKind::Message, 42, seq)
    }

    fn payload(seq: u64, cols: u32) -> Vec<u8> {
        (0..cols * 4).map(|i| (i as u64 ^ seq) as u8).collect()
    }

    #[tokio::test]
    async fn frames_arrive_in_order_through_a_tiny_pipe() {
        // A 7-byte pipe forces every frame to be split across many reads and writes.
        let (a, b) = duplex(7);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b, Limits::default());
        let send = tokio::spawn(async move {
            for seq in 0..200 {
                let cols = (seq % 13) as u32;
                writer
                    .send(&header(seq, cols), &payload(seq, cols))
                    .await
                    .expect("send");
            }
            writer.into_inner().shutdown().await.expect("shutdown");
        });
        for seq in 0..200 {
            let cols = (seq % 13) as u32;
            let frame = reader.recv().await.expect("recv").expect("frame");
            assert_eq!(frame.header, header(seq, cols));
            assert_eq!(frame.payload, payload(seq, cols).as_slice());
        }
        assert!(reader.recv().await.expect("clean end").is_none());
        send.await.expect("sender");
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_skipped_and_the_stream_survives() {
        let (a, b) = duplex(1 << 16);
        let mut writer = FrameWriter::new(a);
        let limits = Limits {
            max_header: 64,
            max_payload: 1024,
        };
        let mut reader = FrameReader::new(b, limits);

        // Oversized: 300 f32 = 1200 bytes > 1024.
        writer
            .send(&header(0, 300), &payload(0, 300))
            .await
            .expect("send");
        // Malformed header bytes with a correct length prefix and a 5-byte payload.
        let garbage = [0xffu8; 10];
        let raw = writer.get_mut();
        raw.write_all(&(garbage.len() as u32).to_le_bytes())
            .await
            .expect("raw");
        raw.write_all(&5u32.to_le_bytes()).await.expect("raw");
        raw.write_all(&garbage).await.expect("raw");
        raw.write_all(&[1, 2, 3, 4, 5]).await.expect("raw");
        // Then a good frame.
        writer
            .send(&header(2, 3), &payload(2, 3))
            .await
            .expect("send");

        match reader.recv().await {
            Err(LinkError::Rejected {
                error:
                    FrameError::PayloadTooLarge {
                        len: 1200,
                        max: 1024,
                    },
                header: Some(h),
            }) => assert_eq!(h, header(0, 300)),
            other => panic!("expected oversized rejection, got {other:?}"),
        }
        match reader.recv().await {
            Err(e @ LinkError::Rejected { header: None, .. }) => assert!(e.is_recoverable()),
            other => panic!("expected malformed rejection, got {other:?}"),
        }
        let frame = reader.recv().await.expect("recv").expect("frame");
        assert_eq!(frame.header, header(2, 3));
        assert_eq!(frame.payload, payload(2, 3).as_slice());
    }

    #[tokio::test]
    async fn absurd_header_length_desynchronises_and_truncation_is_reported() {
        let (mut a, b) = duplex(1024);
        let mut reader = FrameReader::new(b, Limits::default());
        a.write_all(&u32::MAX.to_le_bytes()).await.expect("raw");
        a.write_all(&0u32.to_le_bytes()).await.expect("raw");
        let err = reader.recv().await.expect_err("desync");
        assert!(matches!(
            err,
            LinkError::Desync(FrameError::HeaderTooLarge { .. })
        ));
        assert!(!err.is_recoverable());

        let (a, b) = duplex(1024);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b, Limits::default());
        let h = header(1, 8);
        let prefix = h.encode_prefix(32).expect("encode");
        writer
            .get_mut()
            .write_all(prefix.as_bytes())
            .await
            .expect("raw");
        writer.get_mut().write_all(&[0; 10]).await.expect("raw");
        drop(writer);
        assert!(matches!(reader.recv().await, Err(LinkError::Truncated)));
    }

    #[tokio::test]
    async fn error_frames_carry_code_and_message() {
        let (a, b) = duplex(1024);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b, Limits::default());
        writer
            .send_error(ErrorCode::Oversized, 9, "too big")
            .await
            .expect("send");
        let frame = reader.recv().await.expect("recv").expect("frame");
        assert_eq!(frame.header.kind, FrameKind::Error(ErrorCode::Oversized));
        assert_eq!(frame.header.session, 9);
        assert_eq!(frame.payload, b"too big");
    }
}
