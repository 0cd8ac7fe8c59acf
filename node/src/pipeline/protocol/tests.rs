//! The message codec: round trips, the last-row cut, and hostile bytes.

use super::*;
use proptest::prelude::*;

fn rows_head(rows: u32, width: u32, dtype: WireDtype) -> RowsHead {
    RowsHead {
        pos: 10,
        rows,
        width,
        dtype,
        phase: Phase::Prefill,
        reply: Reply::LastRow,
    }
}

#[test]
fn every_message_round_trips() {
    let mut buf = Vec::new();
    let open = Open {
        positions: 512,
        reply: Some("10.0.0.2:7601".parse().unwrap()),
        resume: None,
    };
    encode_open(&open, &mut buf);
    assert_eq!(Message::decode(&buf).unwrap(), Message::Open(open));
    let open = Open {
        positions: 512,
        reply: None,
        resume: Some(Resume {
            key: u64::MAX - 3,
            len: 400,
        }),
    };
    encode_open(&open, &mut buf);
    assert_eq!(Message::decode(&buf).unwrap(), Message::Open(open));
    encode_close(&mut buf);
    assert_eq!(
        Message::decode(&buf).unwrap(),
        Message::Close(Close { keep: None })
    );
    encode_close_keeping(7, &mut buf);
    assert_eq!(
        Message::decode(&buf).unwrap(),
        Message::Close(Close { keep: Some(7) })
    );
    encode_error(FailureCode::PrefixMiss, "evicted", &mut buf);
    assert!(matches!(
        Message::decode(&buf).unwrap(),
        Message::Error(Failure {
            code: FailureCode::PrefixMiss,
            ..
        })
    ));
    encode_error(FailureCode::Unroutable, "next hop gone", &mut buf);
    assert_eq!(
        Message::decode(&buf).unwrap(),
        Message::Error(Failure {
            code: FailureCode::Unroutable,
            message: "next hop gone".into()
        })
    );
    let values: Vec<f32> = (0..3 * 64).map(|v| v as f32 * 0.5).collect();
    for dtype in [WireDtype::F32, WireDtype::F16, WireDtype::Q8] {
        encode_rows(rows_head(3, 64, dtype), &values, &mut buf);
        let Message::Rows(rows) = Message::decode(&buf).unwrap() else {
            panic!("rows")
        };
        assert_eq!(rows.head, rows_head(3, 64, dtype));
        let mut back = Vec::new();
        rows.values(&mut back).unwrap();
        assert_eq!(back.len(), values.len());
        if dtype == WireDtype::F32 {
            assert_eq!(back, values);
        }
    }
}

#[test]
fn a_prompt_chunks_last_row_is_cut_in_every_dtype() {
    let values: Vec<f32> = (0..3 * 64).map(|v| v as f32).collect();
    for dtype in [WireDtype::F32, WireDtype::F16, WireDtype::Q8] {
        let mut full = Vec::new();
        encode_rows(rows_head(3, 64, dtype), &values, &mut full);
        let Message::Rows(rows) = Message::decode(&full).unwrap() else {
            panic!("rows")
        };
        let mut cut = Vec::new();
        last_row(&rows, &mut cut).unwrap();
        let Message::Rows(last) = Message::decode(&cut).unwrap() else {
            panic!("rows")
        };
        assert_eq!((last.head.pos, last.head.rows), (12, 1), "{dtype:?}");
        let (mut all, mut one) = (Vec::new(), Vec::new());
        rows.values(&mut all).unwrap();
        last.values(&mut one).unwrap();
        assert_eq!(one, all[128..], "{dtype:?}");
    }
    // Q8_0 rows that are not whole blocks cannot be cut apart, nor can a single row.
    let mut buf = Vec::new();
    encode_rows(rows_head(2, 48, WireDtype::Q8), &[0.0; 96], &mut buf);
    let Message::Rows(odd) = Message::decode(&buf).unwrap() else {
        panic!("rows")
    };
    assert!(last_row(&odd, &mut Vec::new()).is_none());
}

#[test]
fn bad_payloads_are_errors() {
    let mut buf = Vec::new();
    encode_rows(rows_head(2, 8, WireDtype::F32), &[1.0; 16], &mut buf);
    buf.pop();
    assert!(matches!(Message::decode(&buf), Err(DecodeError::Shape(_))));
    encode_close(&mut buf);
    buf.push(0);
    assert!(matches!(
        Message::decode(&buf),
        Err(DecodeError::Malformed(_))
    ));
    let mut zero = Vec::new();
    encode_head(&Head::Rows(rows_head(0, 8, WireDtype::F32)), &mut zero);
    assert!(matches!(
        Message::decode(&zero),
        Err(DecodeError::Impossible { .. })
    ));
    // A long error message is cut, at a character boundary.
    encode_error(FailureCode::Refused, &"é".repeat(1000), &mut buf);
    let Message::Error(f) = Message::decode(&buf).unwrap() else {
        panic!("error")
    };
    assert!(f.message.len() <= MAX_MESSAGE && f.message.starts_with('é'));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Message::Rows(rows)) = Message::decode(&bytes) {
            let mut out = Vec::new();
            prop_assert!(rows.values(&mut out).is_ok());
        }
    }
}
