use super::*;

#[test]
fn parses_good_expressions() {
    let label = |k: &str| ConstraintField::Label(k.to_owned());
    let cases: &[(&str, ConstraintField, ConstraintOp, &str)] = &[
        (
            "node.id==abc123",
            ConstraintField::Id,
            ConstraintOp::Eq,
            "abc123",
        ),
        (
            "node.hostname!=pi3",
            ConstraintField::Hostname,
            ConstraintOp::Ne,
            "pi3",
        ),
        (
            "node.role==manager",
            ConstraintField::Role,
            ConstraintOp::Eq,
            "manager",
        ),
        (
            "node.role != worker",
            ConstraintField::Role,
            ConstraintOp::Ne,
            "worker",
        ),
        (
            "node.labels.zone==attic",
            label("zone"),
            ConstraintOp::Eq,
            "attic",
        ),
        (
            "  node.labels.zone  ==  attic ",
            label("zone"),
            ConstraintOp::Eq,
            "attic",
        ),
        (
            "node.labels.com.example.rack!=r1",
            label("com.example.rack"),
            ConstraintOp::Ne,
            "r1",
        ),
        (
            "node.labels.disk==ssd=fast",
            label("disk"),
            ConstraintOp::Eq,
            "ssd=fast",
        ),
    ];
    for (expr, field, op, value) in cases {
        let c = Constraint::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(
            c,
            Constraint {
                field: field.clone(),
                op: *op,
                value: (*value).to_owned()
            },
            "{expr}"
        );
        // Display gives a canonical form that parses back to the same constraint.
        assert_eq!(Constraint::parse(&c.to_string()), Ok(c.clone()), "{expr}");
        assert_eq!(expr.parse::<Constraint>(), Ok(c));
    }
}

#[test]
fn rejects_bad_expressions_with_typed_errors() {
    use ConstraintErrorKind as K;
    let cases: Vec<(&str, ConstraintErrorKind)> = vec![
        ("", K::MissingOperator),
        ("node.labels.zone", K::MissingOperator),
        ("node.labels.zone=attic", K::UnsupportedOperator("=".into())),
        ("node.labels.zone>=2", K::UnsupportedOperator(">=".into())),
        ("node.labels.zone~attic", K::UnsupportedOperator("~".into())),
        ("==attic", K::EmptyField),
        ("node.foo==x", K::UnknownField("node.foo".into())),
        (
            "engine.labels.os==linux",
            K::UnknownField("engine.labels.os".into()),
        ),
        ("node.labels.==x", K::EmptyLabelKey),
        ("node.labels==x", K::EmptyLabelKey),
        ("node.role==", K::EmptyValue),
        ("node.hostname!=  ", K::EmptyValue),
        ("node.role==boss", K::UnknownRole("boss".into())),
        ("node.id==a==b", K::ExtraOperator),
        ("node.id==a!=b", K::ExtraOperator),
    ];
    for (expr, kind) in cases {
        assert_eq!(
            Constraint::parse(expr),
            Err(ConstraintError {
                expr: expr.to_owned(),
                kind
            }),
            "{expr:?}"
        );
    }
}

#[test]
fn error_messages_name_the_expression_and_the_fix() {
    let cases = [
        (
            "node.foo==x",
            "invalid constraint `node.foo==x`: unknown field `node.foo`; expected node.id, \
             node.hostname, node.role or node.labels.KEY",
        ),
        (
            "node.labels.zone=attic",
            "invalid constraint `node.labels.zone=attic`: unsupported operator `=`; expected `==` \
             or `!=`",
        ),
        (
            "node.role==boss",
            "invalid constraint `node.role==boss`: unknown role `boss`; expected manager or worker",
        ),
    ];
    for (expr, message) in cases {
        match Constraint::parse(expr) {
            Err(e) => assert_eq!(e.to_string(), message),
            Ok(c) => panic!("{expr} parsed as {c:?}"),
        }
    }
    let all = Constraint::parse_all(&["node.role==manager", "node.x==1", "bad"]);
    assert_eq!(all.map_err(|e| e.expr), Err("node.x==1".to_owned()));
}

#[test]
fn constraints_match_nodes() {
    let mut n = node("n1");
    n.hostname = "Pi3".into();
    n.role = NodeRole::Manager;
    n.labels.insert("zone".into(), "attic".into());
    let cases = [
        ("node.id==n1", true),
        ("node.id==n2", false),
        ("node.id!=n2", true),
        ("node.hostname==pi3", true),
        ("node.hostname!=PI3", false),
        ("node.role==manager", true),
        ("node.role==worker", false),
        ("node.role!=worker", true),
        ("node.labels.zone==attic", true),
        ("node.labels.zone==Attic", false),
        ("node.labels.zone!=attic", false),
        ("node.labels.zone!=cellar", true),
        ("node.labels.rack==r1", false),
        ("node.labels.rack!=r1", true),
    ];
    for (expr, expected) in cases {
        let c = Constraint::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.matches(&n), expected, "{expr}");
    }
}
