use super::*;

#[test]
fn words_round_trip_and_reject_unknown_values() {
    for a in [
        Availability::Active,
        Availability::Pause,
        Availability::Drain,
    ] {
        assert_eq!(a.as_str().parse::<Availability>(), Ok(a));
    }
    for c in [
        RestartCondition::Any,
        RestartCondition::OnFailure,
        RestartCondition::None,
    ] {
        assert_eq!(c.to_string().parse::<RestartCondition>(), Ok(c));
    }
    for s in [
        TaskState::New,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Orphaned,
    ] {
        assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
    }
    assert_eq!(NodeRole::Manager.to_string(), "manager");
    assert_eq!(NodeStatus::Down.to_string(), "down");
    assert_eq!(DesiredState::Shutdown.to_string(), "shutdown");
    let cases = [
        (
            "availability",
            "Drain".parse::<Availability>().map(|_| ()),
            "invalid availability `Drain`: expected active, pause or drain",
        ),
        (
            "availability",
            "sleep".parse::<Availability>().map(|_| ()),
            "invalid availability `sleep`: expected active, pause or drain",
        ),
        (
            "condition",
            "always".parse::<RestartCondition>().map(|_| ()),
            "invalid restart condition `always`: expected any, on-failure or none",
        ),
        (
            "role",
            "boss".parse::<NodeRole>().map(|_| ()),
            "invalid role `boss`: expected manager or worker",
        ),
    ];
    for (what, got, message) in cases {
        assert_eq!(
            got.map_err(|e| e.to_string()),
            Err(message.to_owned()),
            "{what}"
        );
    }
}

#[test]
fn memory_sizes() {
    const MIB: u64 = 1 << 20;
    let good = [
        ("0", 0),
        ("100", 100),
        ("100b", 100),
        ("1k", 1024),
        ("1KB", 1024),
        ("512m", 512 * MIB),
        ("512M", 512 * MIB),
        ("512MiB", 512 * MIB),
        (" 2g ", 2 * GIB),
        ("1.5g", GIB + GIB / 2),
        ("0.5GiB", GIB / 2),
        ("1t", 1 << 40),
        ("10 m", 10 * MIB),
    ];
    for (s, want) in good {
        assert_eq!(parse_memory(s), Ok(want), "{s:?}");
    }
    for s in [
        "",
        "m",
        "-1m",
        "1x",
        "1.2.3g",
        "1 gigabyte",
        "ib",
        "5ib",
        "1mm",
        ".",
    ] {
        assert_eq!(
            parse_memory(s),
            Err(AmountError::Memory(s.to_owned())),
            "{s:?}"
        );
    }
    assert_eq!(
        parse_memory("99999999999t"),
        Err(AmountError::TooLarge("99999999999t".to_owned()))
    );
    assert_eq!(
        parse_memory("1x").map_err(|e| e.to_string()),
        Err(
            "invalid memory size `1x`: expected a number with an optional unit b, k, m, g or t \
             (powers of 1024), e.g. 512m or 1.5g"
                .to_owned()
        )
    );
}

#[test]
fn cpu_amounts() {
    let good = [
        ("0", 0),
        ("1", CPU),
        ("0.5", CPU / 2),
        (".25", CPU / 4),
        ("2.", 2 * CPU),
        ("1.000000001", CPU + 1),
        ("1.0000000019", CPU + 1),
        ("16", 16 * CPU),
    ];
    for (s, want) in good {
        assert_eq!(parse_cpus(s), Ok(want), "{s:?}");
    }
    for s in ["", ".", "-1", "1/2", "half", "0,5", "1e3"] {
        assert_eq!(parse_cpus(s), Err(AmountError::Cpus(s.to_owned())), "{s:?}");
    }
    assert_eq!(
        parse_cpus("0,5").map_err(|e| e.to_string()),
        Err("invalid CPU amount `0,5`: expected a number of CPUs such as 0.5 or 2".to_owned())
    );
    assert_eq!(
        parse_cpus("18446744073709551615"),
        Err(AmountError::TooLarge("18446744073709551615".to_owned()))
    );
}
