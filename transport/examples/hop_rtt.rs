//! Round-trip time of one pipeline hop on loopback, optionally through link emulation.
//!
//!   cargo run --release -p transport --example hop_rtt -- [SPEC] [PAYLOAD_BYTES] [COUNT]
//!
//! e.g. `-- delay=10ms,jitter=2ms,loss=1%,rate=10mbit 2304 200`. SPEC `none` (the default)
//! measures the plain link. Both endpoints get the spec, so the RTT includes the delay twice.
//! A frame of PAYLOAD_BYTES (default 2304: one SmolLM2-135M hidden state in f32) goes out
//! and the same size comes back, like an activation and its reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::quic::{
    Endpoint, EndpointConfig, FrameHeader, FrameKind, Identity, InsecureAcceptAny, LinkEmulation,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let spec: Option<LinkEmulation> = match args.next().as_deref() {
        None | Some("none") => None,
        Some(s) => Some(s.parse()?),
    };
    let len: usize = args.next().map_or(Ok(2304), |s| s.parse())?;
    let count: usize = args.next().map_or(Ok(200), |s| s.parse())?;

    let config = |seed: u64| -> Result<EndpointConfig, Box<dyn std::error::Error>> {
        let mut config = EndpointConfig::new(Identity::generate()?, Arc::new(InsecureAcceptAny));
        config.handshake_timeout = Duration::from_secs(20);
        config.link_emulation = spec.map(|s| LinkEmulation { seed, ..s });
        Ok(config)
    };
    let server = Endpoint::bind("127.0.0.1:0".parse()?, config(1)?)?;
    let client = Endpoint::bind("127.0.0.1:0".parse()?, config(2)?)?;
    let addr = server.local_addr()?;
    let echo = tokio::spawn(async move {
        let mut link = server.accept().await.expect("endpoint open")?;
        let mut reply = Vec::new();
        while let Some(frame) = link.recv().await? {
            reply.clear();
            reply.extend_from_slice(frame.payload);
            let header = frame.header;
            link.send(&header, &reply).await?;
        }
        Ok::<_, transport::quic::LinkError>(())
    });

    let mut link = client.connect(addr).await?;
    let payload = vec![7u8; len];
    let mut rtts = Vec::with_capacity(count);
    for seq in 0..count as u64 + 5 {
        let header = FrameHeader::new(FrameKind::Message, 1, seq);
        let start = Instant::now();
        link.send(&header, &payload).await?;
        link.recv().await?.ok_or("echo side hung up")?;
        if seq >= 5 {
            rtts.push(start.elapsed());
        }
    }
    link.finish()?;
    echo.await??;
    rtts.sort();
    let pick = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    let lost = link.connection().stats().path.lost_packets;
    println!(
        "spec: {}\npayload {len} B x {count}: rtt min {:?} median {:?} p99 {:?} max {:?}; {lost} packets lost (retransmitted)",
        spec.map_or("none".to_owned(), |s| s.to_string()),
        pick(0.0),
        pick(0.5),
        pick(0.99),
        pick(1.0),
    );
    Ok(())
}
