use super::*;

fn roundtrip(frame: Frame<'_>, serial: u64) {
    let mut buf = Vec::new();
    encode_frame(&frame, serial, &mut buf).unwrap();
    let header = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(header.kind, frame.kind());
    assert_eq!(header.serial, serial);
    assert_eq!(header.len as usize, buf.len() - HEADER_LEN);
    let back = decode_frame(&header, &buf[HEADER_LEN..]).unwrap();
    assert_eq!(back, frame);
}

fn sample_stat() -> StatRecord {
    StatRecord {
        size: 1 << 40,
        mode: 0o100644,
        uid: 1000,
        gid: 100,
        nlink: 2,
        mtime_sec: -5,
        mtime_nsec: 999_999_999,
    }
}

#[test]
fn every_frame_type_roundtrips() {
    roundtrip(
        Frame::Hello {
            version_min: 1,
            version_max: 3,
            features: 0xdead_beef,
            root: b"/srv/r\xff",
        },
        0,
    );
    roundtrip(
        Frame::Welcome {
            version: 1,
            features: 0,
            pid: 4242,
        },
        0,
    );
    roundtrip(Frame::Stat { path: b"a/b" }, 1);
    roundtrip(Frame::List { path: b"" }, 2);
    roundtrip(
        Frame::Mkdir {
            mode: 0o755,
            parents: true,
            path: b"x/y",
        },
        3,
    );
    roundtrip(Frame::Remove { path: b"z" }, 4);
    roundtrip(
        Frame::Rename {
            from: b"a",
            to: b"b",
        },
        5,
    );
    roundtrip(
        Frame::Put {
            mode: 0o600,
            size: UNKNOWN_SIZE,
            path: b"/up",
        },
        6,
    );
    roundtrip(
        Frame::Get {
            chunk: DEFAULT_CHUNK,
            path: b"/down",
        },
        7,
    );
    roundtrip(Frame::Shutdown, 8);
    roundtrip(Frame::Data(&[1, 2, 3]), 9);
    roundtrip(Frame::Data(&[]), 9);
    roundtrip(
        Frame::End {
            len: 77,
            checksum: u64::MAX,
        },
        10,
    );
    roundtrip(Frame::Cancel, 11);
    roundtrip(Frame::Stop, u64::MAX);
    roundtrip(
        Frame::SourceInfo {
            size: 12,
            mode: 0o100600,
        },
        12,
    );
    roundtrip(Frame::Ok, 13);
    roundtrip(
        Frame::Error {
            errno: libc::ENOSPC,
            message: b"write /x: No space left on device",
        },
        14,
    );
    roundtrip(Frame::StatInfo(sample_stat()), 15);
}

#[test]
fn dirents_build_split_and_iterate() {
    let mut b = DirentsBuilder::new();
    let st = sample_stat();
    let mut frames = Vec::new();
    let mut names = Vec::new();
    for i in 0..3000 {
        let name = format!("entry-{i:05}-{}", "n".repeat(20));
        names.push(name.clone());
        if !b.push(name.as_bytes(), &st) {
            let mut out = Vec::new();
            b.finish_into(1, &mut out);
            frames.push(out);
            assert!(b.push(name.as_bytes(), &st));
        }
    }
    let mut out = Vec::new();
    b.finish_into(1, &mut out);
    frames.push(out);
    assert!(
        frames.len() > 1,
        "3000 entries must need more than one frame"
    );

    let mut seen = Vec::new();
    for f in &frames {
        let h = decode_header(f[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert!(h.len <= MAX_CONTROL);
        let Frame::Dirents(d) = decode_frame(&h, &f[HEADER_LEN..]).unwrap() else {
            panic!("not DIRENTS");
        };
        for (name, s) in d.iter() {
            assert_eq!(s, st);
            seen.push(String::from_utf8(name.to_vec()).unwrap());
        }
    }
    assert_eq!(seen, names);
}

#[test]
fn oversized_length_is_refused_from_the_header_alone() {
    let mut h = encode_header(FrameType::Data, 0, 1);
    h[0..4].copy_from_slice(&(MAX_CHUNK + 1).to_be_bytes());
    assert_eq!(
        decode_header(&h),
        Err(DecodeError::TooLarge {
            kind: FrameType::Data,
            len: MAX_CHUNK + 1,
            max: MAX_CHUNK
        })
    );
    let mut h = encode_header(FrameType::Error, 0, 1);
    h[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode_header(&h),
        Err(DecodeError::TooLarge { .. })
    ));
    // A control frame may not use the DATA limit.
    let mut h = encode_header(FrameType::Stat, 0, 1);
    h[0..4].copy_from_slice(&(MAX_CONTROL + 1).to_be_bytes());
    assert!(matches!(
        decode_header(&h),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn unknown_type_and_reserved_bits_are_refused() {
    let mut h = encode_header(FrameType::Ok, 0, 1);
    h[4] = 0x7f;
    assert_eq!(decode_header(&h), Err(DecodeError::UnknownType(0x7f)));
    let mut h = encode_header(FrameType::Ok, 0, 1);
    h[6] = 1;
    assert!(matches!(
        decode_header(&h),
        Err(DecodeError::Reserved { .. })
    ));
}

#[test]
fn text_is_not_a_frame() {
    // What a login shell's banner would look like to the client.
    let banner: &[u8; 16] = b"Welcome to host\n";
    assert!(decode_header(banner).is_err());
}

#[test]
fn truncated_and_trailing_payloads_are_refused() {
    let mut buf = Vec::new();
    encode_frame(
        &Frame::End {
            len: 1,
            checksum: 2,
        },
        3,
        &mut buf,
    )
    .unwrap();
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(matches!(
        decode_frame(&h, &buf[HEADER_LEN..buf.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    let mut long = buf[HEADER_LEN..].to_vec();
    long.push(0);
    assert!(matches!(
        decode_frame(&h, &long),
        Err(DecodeError::Trailing { extra: 1, .. })
    ));
    // A string length that points past the payload.
    let mut buf = Vec::new();
    encode_frame(&Frame::Stat { path: b"abc" }, 1, &mut buf).unwrap();
    buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&1000u32.to_be_bytes());
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(matches!(
        decode_frame(&h, &buf[HEADER_LEN..]),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn bad_magic_is_refused() {
    let mut buf = Vec::new();
    encode_frame(
        &Frame::Welcome {
            version: 1,
            features: 0,
            pid: 1,
        },
        0,
        &mut buf,
    )
    .unwrap();
    buf[HEADER_LEN] = b'X';
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert_eq!(
        decode_frame(&h, &buf[HEADER_LEN..]),
        Err(DecodeError::BadMagic {
            kind: FrameType::Welcome
        })
    );
}

#[test]
fn nul_in_path_is_refused_both_ways() {
    let mut buf = Vec::new();
    assert_eq!(
        encode_frame(&Frame::Stat { path: b"a\0b" }, 1, &mut buf),
        Err(EncodeError::NulInPath {
            kind: FrameType::Stat
        })
    );
    assert!(
        buf.is_empty(),
        "a failed encode leaves the buffer as it was"
    );
    encode_frame(&Frame::Stat { path: b"a_b" }, 1, &mut buf).unwrap();
    buf[HEADER_LEN + 5] = 0;
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(matches!(
        decode_frame(&h, &buf[HEADER_LEN..]),
        Err(DecodeError::NulInPath { .. })
    ));
}

#[test]
fn oversized_path_fails_to_encode() {
    let long = vec![b'a'; MAX_CONTROL as usize];
    let mut buf = vec![9u8];
    assert!(matches!(
        encode_frame(
            &Frame::Get {
                chunk: MIN_CHUNK,
                path: &long
            },
            1,
            &mut buf
        ),
        Err(EncodeError::TooLarge { .. })
    ));
    assert_eq!(buf, vec![9u8]);
}

#[test]
fn long_error_message_is_cut_to_fit() {
    let msg = vec![b'm'; 2 * MAX_CONTROL as usize];
    let mut buf = Vec::new();
    encode_frame(
        &Frame::Error {
            errno: 5,
            message: &msg,
        },
        1,
        &mut buf,
    )
    .unwrap();
    assert!(buf.len() - HEADER_LEN <= MAX_CONTROL as usize);
}

#[test]
fn bad_mkdir_flag_and_stat_nsec_are_refused() {
    let mut buf = Vec::new();
    encode_frame(
        &Frame::Mkdir {
            mode: 0o755,
            parents: false,
            path: b"d",
        },
        1,
        &mut buf,
    )
    .unwrap();
    buf[HEADER_LEN + 4] = 2;
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(matches!(
        decode_frame(&h, &buf[HEADER_LEN..]),
        Err(DecodeError::Invalid { .. })
    ));

    let mut st = sample_stat();
    st.mtime_nsec = 1_000_000_000;
    let mut buf = Vec::new();
    encode_frame(&Frame::StatInfo(st), 1, &mut buf).unwrap();
    let h = decode_header(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    assert!(decode_frame(&h, &buf[HEADER_LEN..]).is_err());
}

#[test]
fn checksum_is_order_and_split_independent() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let mut whole = StreamChecksum::new();
    whole.update(&data);
    let mut parts = StreamChecksum::new();
    for c in data.chunks(333) {
        parts.update(c);
    }
    assert!(parts.matches(whole.len(), whole.digest()));
    assert!(!parts.matches(whole.len() + 1, whole.digest()));
    let mut flipped = data.clone();
    flipped[5000] ^= 1;
    let mut other = StreamChecksum::new();
    other.update(&flipped);
    assert!(!other.matches(whole.len(), whole.digest()));
}

/// Every byte string of a few hundred random headers and payloads either
/// decodes or fails cleanly; none panics.
#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut h = [0u8; HEADER_LEN];
        for b in h.iter_mut() {
            *b = next() as u8;
        }
        // Bias towards known types and small lengths so bodies get decoded.
        h[0..3].copy_from_slice(&[0, 0, 0]);
        h[5..8].copy_from_slice(&[0, 0, 0]);
        let types = [
            0x01, 0x02, 0x10, 0x12, 0x14, 0x15, 0x21, 0x24, 0x31, 0x32, 0x33,
        ];
        h[4] = types[(next() % types.len() as u64) as usize];
        if let Ok(header) = decode_header(&h) {
            let payload: Vec<u8> = (0..header.len).map(|_| next() as u8).collect();
            if let Ok(Frame::Dirents(d)) = decode_frame(&header, &payload) {
                assert_eq!(d.iter().count(), d.len());
            }
        }
    }
}

#[test]
fn fast_path_frames_roundtrip_and_check_their_fields() {
    roundtrip(
        Frame::PutFd {
            mode: 0o600,
            size: 1 << 33,
            path: b"d/f\xfe",
        },
        7,
    );
    roundtrip(Frame::GetFd { path: b"/x" }, 8);
    roundtrip(
        Frame::Copied {
            total: u64::MAX - 1,
        },
        9,
    );
    // A path with NUL, and a COPIED with a short payload, are refused.
    let mut buf = Vec::new();
    assert!(encode_frame(&Frame::GetFd { path: b"a\0b" }, 1, &mut buf).is_err());
    let h = Header {
        kind: FrameType::Copied,
        len: 4,
        serial: 1,
    };
    assert!(matches!(
        decode_frame(&h, &[0; 4]),
        Err(DecodeError::Truncated { .. })
    ));
    assert_eq!(FrameType::from_u8(0x40), Some(FrameType::PutFd));
    assert_eq!(FrameType::GetFd.max_payload(), MAX_CONTROL);
}

/// CRC-64/NVME one bit at a time: the definition, as an oracle for the
/// fast implementation.
#[cfg(not(feature = "bench-skip-checksum"))]
fn crc64_nvme_bitwise(data: &[u8]) -> u64 {
    const POLY_REFLECTED: u64 = 0x9a6c_9329_ac4b_c9b5;
    let mut crc = u64::MAX;
    for &byte in data {
        crc ^= u64::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
#[cfg(not(feature = "bench-skip-checksum"))]
fn checksum_is_crc64_nvme() {
    // The catalogue's check value, then lengths across the fast
    // implementation's short, folding and tail paths, fed in uneven pieces
    // and compared with the bitwise definition.
    let mut check = StreamChecksum::new();
    check.update(b"123456789");
    assert_eq!(check.digest(), 0xae8b_1486_0a79_9888);
    assert_eq!(crc64_nvme_bitwise(b"123456789"), 0xae8b_1486_0a79_9888);
    assert_eq!(StreamChecksum::new().digest(), 0, "CRC of nothing");

    let data: Vec<u8> = (0..(1u32 << 20) + 17)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for n in [
        1,
        3,
        15,
        16,
        17,
        63,
        64,
        65,
        255,
        256,
        257,
        1024,
        4096,
        65536,
        (1 << 20) + 17,
    ] {
        let mut sum = StreamChecksum::new();
        let (mut i, mut step) = (0, 1);
        while i < n {
            let e = (i + step).min(n);
            sum.update(&data[i..e]);
            i = e;
            step = step * 3 + 1;
        }
        assert_eq!(
            sum.digest(),
            crc64_nvme_bitwise(&data[..n]),
            "CRC-64/NVME of {n} bytes"
        );
        assert_eq!(sum.len(), n as u64);
    }
}

#[test]
fn dirents_names_that_leave_the_directory_are_refused() {
    for bad in [&b""[..], b".", b"..", b"a/../../etc/passwd", b"/etc", b"x/"] {
        let mut b = DirentsBuilder::new();
        assert!(b.push(b"fine", &sample_stat()));
        assert!(b.push(bad, &sample_stat()));
        let mut f = Vec::new();
        b.finish_into(3, &mut f);
        let h = decode_header(f[..HEADER_LEN].try_into().unwrap()).unwrap();
        let r = decode_frame(&h, &f[HEADER_LEN..]);
        assert!(
            matches!(
                r,
                Err(DecodeError::Invalid {
                    kind: FrameType::Dirents,
                    ..
                })
            ),
            "{:?} was accepted: {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
}
