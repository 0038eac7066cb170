//! The resolver's decision, pure: a query's bytes and a snapshot of the cluster's names in,
//! what to do out — reply with these bytes, forward the query upstream, or drop it.
//! ARCHITECTURE.md, "Service discovery (issue 22)", says what is answered and why.

use std::collections::HashMap;
use std::net::Ipv4Addr;

pub use crate::manager::services::EndpointMode;

use super::codec::{
    CLASS_ANY, CLASS_IN, Header, Message, Rcode, Reply, TCP_MAX, TYPE_A, TYPE_ANY, UDP_EDNS_MAX,
    UDP_PLAIN_MAX,
};

/// One service as the resolver sees it on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    /// Endpoint mode.
    pub mode: EndpointMode,
    /// Its virtual IP on this node (vip mode; none while this node has no VIP range).
    pub vip: Option<Ipv4Addr>,
    /// Its ready tasks' addresses reachable from this node's network, in a stable order.
    pub tasks: Vec<Ipv4Addr>,
}

/// The cluster's names on this node: a snapshot the server swaps whole when the table
/// changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    services: HashMap<String, ServiceName>,
    /// The stack of each local task's address (`com.docker.stack.namespace`): a name asked
    /// from there resolves to `STACK_NAME` first, so a stack's services reach each other by
    /// their compose names.
    stacks: HashMap<Ipv4Addr, String>,
}

impl Names {
    /// Adds (or replaces) a service under its name, matched without regard to ASCII case.
    pub fn insert(&mut self, name: &str, service: ServiceName) {
        self.services.insert(name.to_ascii_lowercase(), service);
    }

    /// The service of that (lowercase) name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&ServiceName> {
        self.services.get(name)
    }

    /// Records that the task at `addr` belongs to the stack `stack`.
    pub fn insert_stack_member(&mut self, addr: Ipv4Addr, stack: &str) {
        self.stacks.insert(addr, stack.to_ascii_lowercase());
    }

    /// The service `name` (lowercase) means when `asker` asks: its stack's `STACK_name`
    /// first, then the cluster-wide `name`.
    #[must_use]
    pub fn lookup(&self, name: &str, asker: Option<Ipv4Addr>) -> Option<&ServiceName> {
        asker
            .and_then(|a| self.stacks.get(&a))
            .and_then(|stack| self.services.get(&format!("{stack}_{name}")))
            .or_else(|| self.services.get(name))
    }

    /// How many services.
    #[must_use]
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// No service?
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// How the query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: replies are cut at 512 bytes, or the asker's EDNS0 size up to 1232, with TC set.
    Udp,
    /// TCP: up to 65 535 bytes.
    Tcp,
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a cluster name: send the query, unchanged, to the node's upstream resolvers and
    /// relay their answer.
    Forward,
    /// Not worth an answer (too short for a header, or a response rather than a query).
    Drop,
}

/// The TTL of cluster answers: none, so a change is seen at the next lookup.
pub const TTL: u32 = 0;

/// Decides what to do with `query`, asked over `transport`, given the cluster's `names`.
///
/// - Single-label names are the cluster's: a service answers (vip: its VIP; dnsrr: its
///   tasks), any other is NXDOMAIN. `tasks.NAME` answers the tasks of service NAME, or
///   NXDOMAIN. Only A (or ANY) queries of class IN get records; other types of a cluster
///   name get NOERROR with none (so a client asking AAAA first moves on to A at once).
/// - Every other name (and the root) is forwarded.
/// - Bytes that are no query: dropped when the header cannot be read or says response;
///   FORMERR when the rest cannot be parsed or there is not exactly one question; NOTIMP for
///   an opcode other than QUERY.
#[must_use]
pub fn resolve(query: &[u8], names: &Names, transport: Transport) -> Outcome {
    resolve_from(query, names, transport, None)
}

/// [`resolve`] for a query from `asker`: a stack's task gets its stack's services by their
/// short names ([`Names::lookup`]).
pub fn resolve_from(
    query: &[u8],
    names: &Names,
    transport: Transport,
    asker: Option<Ipv4Addr>,
) -> Outcome {
    let Ok(header) = Header::parse(query) else {
        return Outcome::Drop;
    };
    if header.is_response() {
        return Outcome::Drop;
    }
    let bare = |rcode| Outcome::Reply(Reply::bare(header, None, rcode).encode());
    if header.opcode() != 0 {
        return bare(Rcode::NotImp);
    }
    let message = match Message::parse(query) {
        Ok(m) if m.questions.len() == 1 => m,
        _ => return bare(Rcode::FormErr),
    };
    let question = &message.questions[0];
    let name = question.name_lower();
    let service = match question.labels.len() {
        1 => names.lookup(&name, asker).map(|s| (s, false)),
        2 if name.starts_with("tasks.") => names
            .lookup(&name["tasks.".len()..], asker)
            .map(|s| (s, true)),
        _ => return Outcome::Forward,
    };
    let edns = message.edns_size();
    let max = match transport {
        Transport::Tcp => TCP_MAX,
        Transport::Udp => edns.map_or(UDP_PLAIN_MAX, |size| {
            usize::from(size).clamp(UDP_PLAIN_MAX, UDP_EDNS_MAX)
        }),
    };
    let wants_a = matches!(question.qtype, TYPE_A | TYPE_ANY)
        && matches!(question.qclass, CLASS_IN | CLASS_ANY);
    let (rcode, answers): (Rcode, &[Ipv4Addr]) = match service {
        None => (Rcode::NxDomain, &[]),
        Some(_) if !wants_a => (Rcode::NoError, &[]),
        Some((s, true)) => (Rcode::NoError, &s.tasks),
        Some((s, false)) => match s.mode {
            EndpointMode::Dnsrr => (Rcode::NoError, &s.tasks),
            EndpointMode::Vip => (Rcode::NoError, s.vip.as_slice()),
        },
    };
    let question = question.encode();
    Outcome::Reply(
        Reply {
            query: header,
            question: Some(&question),
            rcode,
            authoritative: true,
            recursion_available: true,
            answers,
            ttl: TTL,
            edns: edns.is_some(),
            max,
        }
        .encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::codec::{TYPE_AAAA, TYPE_SRV, query};
    use super::*;

    fn names() -> Names {
        let mut n = Names::default();
        n.insert(
            "api",
            ServiceName {
                mode: EndpointMode::Vip,
                vip: Some(Ipv4Addr::new(10, 247, 128, 1)),
                tasks: vec![Ipv4Addr::new(10, 247, 0, 2), Ipv4Addr::new(10, 247, 0, 3)],
            },
        );
        n.insert(
            "Db",
            ServiceName {
                mode: EndpointMode::Dnsrr,
                vip: None,
                tasks: vec![Ipv4Addr::new(10, 247, 0, 9)],
            },
        );
        n.insert(
            "big",
            ServiceName {
                mode: EndpointMode::Vip,
                vip: Some(Ipv4Addr::new(10, 247, 128, 3)),
                tasks: (0..100).map(|i| Ipv4Addr::new(10, 247, 1, i)).collect(),
            },
        );
        n
    }

    fn reply(q: &[u8], transport: Transport) -> Message {
        match resolve(q, &names(), transport) {
            Outcome::Reply(bytes) => Message::parse(&bytes).expect("reply parses"),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn addrs(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(super::super::codec::Record::a)
            .collect()
    }

    #[test]
    fn a_service_name_answers_its_vip() {
        let m = reply(&query(42, "api", TYPE_A, None), Transport::Udp);
        assert_eq!(m.header.id, 42);
        assert!(m.header.is_response() && m.header.aa() && m.header.rd());
        assert_eq!(m.header.rcode(), Rcode::NoError as u8);
        assert_eq!(m.questions[0].name_lower(), "api");
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 247, 128, 1)]);
        assert_eq!(m.answers[0].ttl, TTL);
        // Case and a trailing dot do not matter; the question keeps the asker's case.
        let m = reply(&query(43, "API.", TYPE_A, None), Transport::Udp);
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 247, 128, 1)]);
        assert_eq!(m.questions[0].labels[0], b"API");
    }

    #[test]
    fn issue_23_a_stacks_task_reaches_its_stacks_services_by_their_short_names() {
        let mut n = names();
        let vip = |last| ServiceName {
            mode: EndpointMode::Vip,
            vip: Some(Ipv4Addr::new(10, 247, 128, last)),
            tasks: vec![],
        };
        n.insert("home_db", vip(20));
        n.insert("blog_db", vip(21));
        let home_web = Ipv4Addr::new(10, 247, 0, 40);
        n.insert_stack_member(home_web, "home");
        let ask = |name: &str, from: Option<Ipv4Addr>| match resolve_from(
            &query(9, name, TYPE_A, None),
            &n,
            Transport::Udp,
            from,
        ) {
            Outcome::Reply(r) => addrs(&Message::parse(&r).unwrap()),
            other => panic!("{other:?}"),
        };
        assert_eq!(ask("db", Some(home_web)), [Ipv4Addr::new(10, 247, 128, 20)]);
        assert_eq!(
            ask("home_db", Some(home_web)),
            [Ipv4Addr::new(10, 247, 128, 20)]
        );
        // Another stack's by its full name; a cluster-wide name still answers.
        assert_eq!(
            ask("blog_db", Some(home_web)),
            [Ipv4Addr::new(10, 247, 128, 21)]
        );
        assert_eq!(ask("api", Some(home_web)), [Ipv4Addr::new(10, 247, 128, 1)]);
        // Outside the stack, `db` is the cluster-wide `db` (a dnsrr service here).
        assert_eq!(ask("db", None), [Ipv4Addr::new(10, 247, 0, 9)]);
    }

    #[test]
    fn tasks_and_dnsrr_answer_task_addresses() {
        let m = reply(&query(1, "tasks.api", TYPE_A, None), Transport::Udp);
        assert_eq!(
            addrs(&m),
            [Ipv4Addr::new(10, 247, 0, 2), Ipv4Addr::new(10, 247, 0, 3)]
        );
        let m = reply(&query(1, "db", TYPE_A, None), Transport::Udp);
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 247, 0, 9)]);
        let m = reply(&query(1, "tasks.db", TYPE_ANY, None), Transport::Udp);
        assert_eq!(addrs(&m), [Ipv4Addr::new(10, 247, 0, 9)]);
    }

    #[test]
    fn aaaa_and_other_types_of_a_known_name_are_empty_noerror() {
        for qtype in [TYPE_AAAA, TYPE_SRV, 16] {
            let m = reply(&query(5, "api", qtype, None), Transport::Udp);
            assert_eq!(m.header.rcode(), Rcode::NoError as u8, "type {qtype}");
            assert!(m.answers.is_empty());
            assert!(m.header.aa());
        }
    }

    #[test]
    fn unknown_cluster_names_are_nxdomain_and_others_forwarded() {
        for name in ["nope", "tasks.nope", "tasks.tasks"] {
            let m = reply(&query(5, name, TYPE_A, None), Transport::Udp);
            assert_eq!(m.header.rcode(), Rcode::NxDomain as u8, "{name}");
            assert!(m.answers.is_empty());
            let m = reply(&query(5, name, TYPE_AAAA, None), Transport::Udp);
            assert_eq!(m.header.rcode(), Rcode::NxDomain as u8, "{name} AAAA");
        }
        for name in ["example.com", "api.example.com", "tasks.api.x", "", "a.b"] {
            assert_eq!(
                resolve(&query(5, name, TYPE_A, None), &names(), Transport::Udp),
                Outcome::Forward,
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_long_answer_is_truncated_on_udp_and_whole_on_tcp() {
        let q = query(1, "tasks.big", TYPE_A, None);
        let m = reply(&q, Transport::Udp);
        assert!(m.header.tc());
        assert!(!m.answers.is_empty() && m.answers.len() < 100);
        let m = reply(&query(1, "tasks.big", TYPE_A, Some(4096)), Transport::Udp);
        assert!(m.header.tc(), "100 records need more than 1232 bytes");
        assert_eq!(m.edns_size(), Some(1232));
        let m = reply(&q, Transport::Tcp);
        assert!(!m.header.tc());
        assert_eq!(m.answers.len(), 100);
        // Small answers fit, with the OPT echoed.
        let m = reply(&query(1, "api", TYPE_A, Some(1232)), Transport::Udp);
        assert!(!m.header.tc());
        assert_eq!(m.edns_size(), Some(1232));
    }

    /// Found by `issue_22_mutated_dns_queries_never_panic`: a question whose name is a
    /// compression pointer (to offset 2, inside the header) was copied as is into the reply,
    /// where offset 2 holds the reply's flags: the reply was not a DNS message. The question
    /// is now written uncompressed.
    #[test]
    fn issue_22_a_compressed_question_is_answered_uncompressed() {
        let q = [
            0x00, 0x03, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x02,
            0x44, 0x42, 0x00, 0x00, 0xff, 0x00, 0x01,
        ];
        let m = reply(&q, Transport::Udp);
        assert_eq!(m.header.id, 3);
        assert_eq!(m.questions[0].labels, [vec![0u8]]);
        assert_eq!(m.header.rcode(), Rcode::NxDomain as u8);
        assert!(crate::fuzzing::dns(&q));
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing_never_a_panic() {
        let n = names();
        assert_eq!(resolve(&[], &n, Transport::Udp), Outcome::Drop);
        assert_eq!(resolve(&[0; 11], &n, Transport::Udp), Outcome::Drop);
        // A response is never answered (no reflection loops).
        let mut r = query(1, "api", TYPE_A, None);
        r[2] |= 0x80;
        assert_eq!(resolve(&r, &n, Transport::Udp), Outcome::Drop);
        // No question, two questions, a cut question: FORMERR with the ID.
        for bytes in [
            {
                let mut q = query(77, "api", TYPE_A, None);
                q[5] = 0;
                q
            },
            {
                let mut q = query(77, "api", TYPE_A, None);
                q[5] = 2;
                q
            },
            query(77, "api", TYPE_A, None)[..15].to_vec(),
        ] {
            let m = match resolve(&bytes, &n, Transport::Udp) {
                Outcome::Reply(b) => Message::parse(&b).expect("parses"),
                other => panic!("{other:?}"),
            };
            assert_eq!(m.header.id, 77);
            assert_eq!(m.header.rcode(), Rcode::FormErr as u8);
        }
        // Another opcode (NOTIFY): NOTIMP.
        let mut q = query(3, "api", TYPE_A, None);
        q[2] |= 4 << 3;
        let Outcome::Reply(b) = resolve(&q, &n, Transport::Udp) else {
            panic!("no reply");
        };
        assert_eq!(Header::parse(&b).expect("h").rcode(), Rcode::NotImp as u8);
        // Every cut and every single-byte change of real queries: no panic, and a reply
        // never over its limit.
        for q in [
            query(1, "tasks.big", TYPE_A, Some(4096)),
            query(2, "api", TYPE_AAAA, None),
        ] {
            for cut in 0..=q.len() {
                let _ = resolve(&q[..cut], &n, Transport::Udp);
            }
            for i in 0..q.len() {
                for b in [0u8, 1, 0x3f, 0x40, 0xc0, 0xff] {
                    let mut m = q.clone();
                    m[i] = b;
                    if let Outcome::Reply(r) = resolve(&m, &n, Transport::Udp) {
                        assert!(r.len() <= UDP_EDNS_MAX);
                    }
                }
            }
        }
    }
}
