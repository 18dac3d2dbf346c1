//! Reading the repo's own captures (classic pcap, Ethernet/IPv4/UDP frames, as
//! crates/netflow/examples/cluster_stream.rs writes them) for benchmarks and profiling
//! aids that replay them without sockets.

use std::net::{Ipv4Addr, SocketAddr};

/// The (sender, UDP payload) of every frame of a classic little-endian pcap; an error
/// names the byte offset of the first record that is cut short or not Ethernet/IPv4/UDP.
pub fn udp_payloads(data: &[u8]) -> Result<Vec<(SocketAddr, &[u8])>, String> {
    if data.len() < 24 {
        return Err(format!("{} bytes: shorter than a pcap header", data.len()));
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let len = data
            .get(at + 8..at + 12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| format!("record at byte {at}: short header"))?;
        let frame = data
            .get(at + 16..at + 16 + len)
            .ok_or_else(|| format!("record at byte {at}: its frame runs past the file"))?;
        let Some(ip) = frame.get(14..).filter(|ip| ip.len() >= 28) else {
            return Err(format!("record at byte {at}: not Ethernet/IPv4/UDP"));
        };
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let sport = u16::from_be_bytes([ip[20], ip[21]]);
        out.push((SocketAddr::from((src, sport)), &ip[28..]));
        at += 16 + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 14];
        let mut ip = vec![0u8; 28];
        ip[12..16].copy_from_slice(&[192, 0, 2, 7]);
        ip[20..22].copy_from_slice(&2055u16.to_be_bytes());
        frame.extend(ip);
        frame.extend_from_slice(payload);
        let mut r = vec![0u8; 16];
        r[8..12].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        r.extend(frame);
        r
    }

    #[test]
    fn frames_come_out_with_their_sender_and_payload() {
        let mut f = vec![0u8; 24];
        f.extend(record(b"abc"));
        f.extend(record(b"de"));
        let got = udp_payloads(&f).expect("parses");
        let from: SocketAddr = "192.0.2.7:2055".parse().expect("addr");
        assert_eq!(got, vec![(from, &b"abc"[..]), (from, &b"de"[..])]);
    }

    #[test]
    fn a_cut_record_is_named_by_its_offset() {
        let mut f = vec![0u8; 24];
        f.extend(record(b"abc"));
        let cut = f.len() - 1;
        let e = udp_payloads(&f[..cut]).expect_err("cut");
        assert!(e.contains("byte 24"), "{e}");
        assert!(udp_payloads(&[0; 3]).is_err());
    }
}
