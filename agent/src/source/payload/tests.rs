use proptest::prelude::*;

use super::*;
use crate::config::PayloadConfig;

fn parser(format: &str, extra: &str) -> PayloadParser {
    let text = format!("format = \"{format}\"\n{extra}");
    let config: PayloadConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    PayloadParser::new(&config, 1024)
}

fn json() -> PayloadParser {
    parser(
        "json",
        "value = \"/v\"\ntimestamp = \"/ts\"\nsensor = \"/id\"\nseq = \"/seq\"",
    )
}

#[test]
fn json_pointers_pick_value_timestamp_sensor_and_seq() {
    let out = json()
        .parse(
            br#"{"v": 21.5, "ts": 1700000000123, "id": "t1", "seq": 9}"#,
            0,
        )
        .unwrap();
    assert_eq!(
        out,
        [RawReading {
            sensor: Some("t1".into()),
            ts_ms: Some(1_700_000_000_123),
            value: 21.5,
            seq: Some(9)
        }]
    );
}

#[test]
fn json_timestamps_in_seconds_become_milliseconds() {
    let p = parser(
        "json",
        "value = \"/v\"\ntimestamp = \"/t\"\ntimestamp_unit = \"s\"",
    );
    let out = p.parse(br#"{"v": 1, "t": 1700000000.5}"#, 0).unwrap();
    assert_eq!(out[0].ts_ms, Some(1_700_000_000_500));
}

#[test]
fn json_errors_say_what_was_wrong() {
    let p = json();
    assert!(matches!(p.parse(b"{", 0), Err(PayloadError::NotJson(_))));
    assert!(matches!(
        p.parse(br#"{"x":1,"id":"a"}"#, 0),
        Err(PayloadError::Missing { .. })
    ));
    assert!(matches!(
        p.parse(br#"{"v":"hot","id":"a"}"#, 0),
        Err(PayloadError::WrongType {
            expected: "a number",
            ..
        })
    ));
    assert!(matches!(
        p.parse(br#"{"v":1,"ts":-5,"id":"a"}"#, 0),
        Err(PayloadError::BadTimestamp)
    ));
    assert!(matches!(
        p.parse(br#"{"v":1,"id":"a","seq":-1}"#, 0),
        Err(PayloadError::WrongType { .. })
    ));
    assert!(matches!(
        p.parse(&[b' '; 2000], 0),
        Err(PayloadError::TooLarge {
            len: 2000,
            max: 1024
        })
    ));
}

#[test]
fn plain_numbers_parse_and_non_numbers_do_not() {
    let p = parser("number", "");
    assert_eq!(p.parse(b" 42.5\n", 0).unwrap()[0].value, 42.5);
    assert!(matches!(p.parse(b"NaN", 0), Err(PayloadError::NotFinite)));
    assert!(matches!(p.parse(b"abc", 0), Err(PayloadError::NotNumber)));
    assert!(matches!(
        p.parse(&[0xff, 0xfe], 0),
        Err(PayloadError::NotUtf8)
    ));
}

#[test]
fn senml_packs_resolve_base_name_time_and_value() {
    // RFC 8428 section 5.1.2 style: base name and base time shared by two records.
    let body =
        br#"[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e9,"n":"voltage","v":120.1},
                    {"n":"current","t":-5,"v":1.2},
                    {"n":"on","vb":true}]"#;
    let out = parser("senml", "").parse(body, 0).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0].sensor.as_deref(),
        Some("urn:dev:ow:10e2073a01080063:voltage")
    );
    assert_eq!(out[0].ts_ms, Some(1_320_067_464_000));
    assert_eq!(out[1].ts_ms, Some(1_320_067_459_000));
    assert_eq!((out[2].value, out[2].ts_ms), (1.0, Some(1_320_067_464_000)));
}

#[test]
fn senml_relative_times_count_from_now() {
    let out = parser("senml", "")
        .parse(br#"[{"n":"a","v":1,"t":-2}]"#, 10_000)
        .unwrap();
    assert_eq!(out[0].ts_ms, Some(8_000));
    let out = parser("senml", "")
        .parse(br#"[{"n":"a","v":1}]"#, 10_000)
        .unwrap();
    assert_eq!(out[0].ts_ms, Some(10_000));
}

#[test]
fn senml_errors_name_the_record() {
    let p = parser("senml", "");
    assert!(matches!(p.parse(b"[]", 0), Err(PayloadError::SenmlShape)));
    assert!(matches!(
        p.parse(br#"{"n":"a"}"#, 0),
        Err(PayloadError::SenmlShape)
    ));
    assert!(matches!(
        p.parse(br#"[{"n":"a","v":1},{"n":"b","vs":"x"}]"#, 0),
        Err(PayloadError::SenmlNoValue { index: 1 })
    ));
    assert!(matches!(
        p.parse(br#"[{"n":5,"v":1}]"#, 0),
        Err(PayloadError::SenmlField {
            index: 0,
            field: "n"
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Stand-in for a fuzz target: no byte string makes any parser panic, and whatever they
    /// accept is finite.
    #[test]
    fn no_parser_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1100), now in any::<u64>()) {
        for p in [json(), parser("senml", ""), parser("number", "")] {
            if let Ok(out) = p.parse(&bytes, now) {
                prop_assert!(out.iter().all(|r| r.value.is_finite()));
            }
        }
    }

    #[test]
    fn no_parser_panics_on_json_shaped_text(text in r#"[\[\]{}",:0-9a-z.eE+\- ]{0,200}"#, now in any::<u64>()) {
        for p in [json(), parser("senml", "")] {
            let _ = p.parse(text.as_bytes(), now);
        }
    }
}

/// JSON text with keys the pointers below look for, duplicate keys, escapes, every kind of
/// number (and out-of-range ones, which the parse must refuse), nested a few levels.
fn json_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        r#""v""#,
        r#""ts""#,
        r#""id""#,
        r#""seq""#,
        r#""a""#,
        r#""b""#,
        r#""0""#,
        r#""1""#,
        r#""~""#,
        r#""/""#,
        r#""a/b""#,
        r#""\u0076""#,
        r#""\/""#,
        r#""é""#,
    ]);
    let scalar = prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "-0",
        "7",
        "-7",
        "21.5",
        "-0.0",
        "1e3",
        "1.5E-7",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "1e308",
        "1e400",
        "-1e400",
        "1700000000123",
        r#""t1""#,
        r#""""#,
        r#""a\"b\\c\u00e9""#,
        r#""\ud83d\ude00""#,
        r#""\ud800""#,
    ])
    .prop_map(str::to_owned);
    scalar.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|v| {
                let fields: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn pointer() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "", "/v", "/ts", "/id", "/seq", "/a", "/a/v", "/a/0", "/a/1/v", "/0", "/01", "/+1", "/1",
        "/a~1b", "/~0", "/~1", "/", "v", "/a/b/v", "/é",
    ])
    .prop_map(str::to_owned)
}

/// The same outcome: equal readings, or errors that print the same.
fn same(a: Result<RawReading, PayloadError>, b: Result<RawReading, PayloadError>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.to_string() == b.to_string(),
        _ => false,
    }
}

#[test]
fn picked_pointers_answer_as_value_does_on_known_traps() {
    let p = |v: &str, id: &str| parser("json", &format!("value = \"{v}\"\nsensor = \"{id}\""));
    let cases = [
        (
            p("/v", "/id"),
            r#"{"v":1,"id":"x","v":2}"#,
            Some((2.0, "x")),
        ),
        (
            p("/a/v", "/id"),
            r#"{"a":{"v":1},"id":"x","a":{"w":2}}"#,
            None,
        ),
        (p("/a/1", "/id"), r#"{"a":[0,5],"id":7}"#, Some((5.0, "7"))),
        (p("/a/01", "/id"), r#"{"a":[0,5],"id":7}"#, None),
        (p("/a~1b", "/~0"), r#"{"a/b":3,"~":"t"}"#, Some((3.0, "t"))),
        (p("", "/id"), r#"4.5"#, None),
        (p("/v", "/id"), r#"{"v":1,"id":"x","w":1e400}"#, None),
        (p("/v", "/id"), r#"{"v":1.0,"id":1.5} x"#, None),
    ];
    for (parser, body, want) in cases {
        let new = parser.parse(body.as_bytes(), 0).map(|mut r| r.remove(0));
        let old = parse_json_by_value(&parser, body.as_bytes());
        if let Some((value, id)) = want {
            let r = new.as_ref().unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!((r.value, r.sensor.as_deref()), (value, Some(id)), "{body}");
        } else {
            assert!(new.is_err(), "{body}: {new:?}");
        }
        assert!(same(new, old), "{body}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The one-pass picker finds what `serde_json::Value::pointer` finds on the parsed document,
    /// and refuses what its parse refuses with the same error; whole bodies, and bodies cut
    /// short or with bytes appended.
    #[test]
    fn picked_pointers_answer_as_value_does(
        text in json_text(),
        (value, ts, id, seq) in (pointer(), pointer(), pointer(), pointer()),
        unit_s in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        tail in prop::sample::select(vec!["", " ", "x", ",1", "]", "}", "\u{0}"]),
    ) {
        let unit = if unit_s { "s" } else { "ms" };
        let p = parser(
            "json",
            &format!("value = \"{value}\"\ntimestamp = \"{ts}\"\ntimestamp_unit = \"{unit}\"\nsensor = \"{id}\"\nseq = \"{seq}\""),
        );
        // Cut anywhere, even inside a character.
        let cut_short = &text.as_bytes()[..cut.index(text.len() + 1)];
        for body in [text.as_bytes(), format!("{text}{tail}").as_bytes(), cut_short] {
            let new = p.parse(body, 0).map(|mut r| r.remove(0));
            let old = parse_json_by_value(&p, body);
            prop_assert!(
                same(new, old),
                "{} with {:?}",
                String::from_utf8_lossy(body),
                (&value, &ts, &id, &seq)
            );
        }
    }
}
