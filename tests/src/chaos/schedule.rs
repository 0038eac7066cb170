//! The seeded schedule: which fault, at what offset, on which node, and the client writes.
//! A function of the seed and the configuration only (node counts, duration, whether
//! Docker is used), never of timing: the same seed replays the same schedule. The
//! outcome may still differ between two runs of one seed (a fault lands on another
//! moment of an election, a write on another leader).

use std::time::Duration;

use crate::Rng;

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` these nodes (indices: managers first, then workers), restart them after
    /// the hold.
    Kill(Vec<usize>),
    /// `kill -9` whichever manager leads at that moment (the seed decides to kill the
    /// leader, the cluster decides who that is), restart it after the hold.
    KillLeader,
    /// Drop every UDP datagram between this node and every other node, both directions.
    Partition(usize),
    /// Drop this share (percent) of the UDP datagrams from the first node to the second
    /// (one direction only).
    Loss {
        from: usize,
        to: usize,
        percent: u32,
    },
    /// `docker kill` one running task container of the cluster: the `pick`-th (modulo the
    /// count) of the list sorted by container ID.
    DockerKill { pick: u64 },
    /// Step this node's wall clock by `secs` (forward or back, as NTP does when it finds
    /// the clock far off), step it back after the hold. Its monotonic clock goes on.
    ClockJump { node: usize, secs: i64 },
}

/// The clock steps a [`Fault::ClockJump`] picks from: seconds to a day, both ways.
pub const CLOCK_STEPS: [i64; 10] = [-86_400, -3_600, -600, -90, -20, 20, 90, 600, 3_600, 86_400];

/// A fault at `at` (offset from the start of the faults), lifted after `hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub at: Duration,
    pub hold: Duration,
    pub fault: Fault,
}

impl Episode {
    /// Whether this episode kills a majority of the managers (a quorum loss).
    pub fn majority(&self, managers: usize) -> bool {
        matches!(&self.fault, Fault::Kill(v) if v.iter().filter(|i| **i < managers).count() > managers / 2)
    }
}

/// One client write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `service create --name NAME --replicas N --driver process /bin/sleep …`.
    Create { service: String, replicas: u64 },
    /// `service scale SERVICE=N --detach`.
    Scale { service: String, replicas: u64 },
    /// `service update --detach --env-add SEQ=N SERVICE`.
    Update { service: String, seq: u64 },
    /// `service rm SERVICE`.
    Rm { service: String },
    /// `node update --label-add chaos=N NODE` (node index).
    Label { node: usize, seq: u64 },
}

/// A write issued `gap` after the previous one, first to manager `manager` (then to the
/// others in order when that one's daemon does not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWrite {
    pub gap: Duration,
    pub manager: usize,
    pub write: Write,
}

/// The services that exist before the faults start and that writes may scale/update (never
/// remove): the mesh service and the health-checked one on the process driver, and with
/// Docker the published httpd.
pub fn base_services(docker: bool) -> Vec<&'static str> {
    if docker {
        vec!["echo", "hc", "web"]
    } else {
        vec!["echo", "hc"]
    }
}

/// Everything one seed decides.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub episodes: Vec<Episode>,
    pub writes: Vec<PlannedWrite>,
}

fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi - lo + 1)
}

fn ms(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(between(rng, lo, hi))
}

impl Schedule {
    /// The schedule of `seed` for `managers` + `workers` nodes over `duration`.
    ///
    /// Node faults come one at a time (a kill, a partition, a lossy link), each held 3–8 s
    /// (a majority kill 5–10 s) and followed by 4–10 s of calm; a `docker kill` (with
    /// Docker) is a point fault in that stream. Kills take a minority of the managers
    /// (or a worker, or the leader), and about one node fault in ten kills a majority of
    /// the managers. With `clock`, about one fault in eight is a wall-clock step of one
    /// node instead. Writes come every 0.3–2.5 s all along.
    pub fn new(
        seed: u64,
        managers: usize,
        workers: usize,
        duration: Duration,
        docker: bool,
        clock: bool,
    ) -> Schedule {
        let nodes = managers + workers;
        let mut rng = Rng(seed.max(1));
        // Mix the seed first so neighbouring seeds give unrelated schedules.
        for _ in 0..8 {
            rng.next_u64();
        }
        let mut episodes = Vec::new();
        let mut t = ms(&mut rng, 2000, 4000);
        while t < duration {
            let roll = rng.next_u64() % 100;
            let (fault, hold) = if clock && rng.next_u64().is_multiple_of(8) {
                let node = (rng.next_u64() % nodes as u64) as usize;
                let secs = CLOCK_STEPS[(rng.next_u64() % CLOCK_STEPS.len() as u64) as usize];
                (Fault::ClockJump { node, secs }, ms(&mut rng, 3000, 8000))
            } else if docker && roll < 10 {
                (
                    Fault::DockerKill {
                        pick: rng.next_u64(),
                    },
                    Duration::ZERO,
                )
            } else if roll < 22 {
                (Fault::KillLeader, ms(&mut rng, 3000, 8000))
            } else if roll < 36 {
                let m = (rng.next_u64() % managers as u64) as usize;
                (Fault::Kill(vec![m]), ms(&mut rng, 3000, 8000))
            } else if roll < 50 && workers > 0 {
                let w = managers + (rng.next_u64() % workers as u64) as usize;
                (Fault::Kill(vec![w]), ms(&mut rng, 3000, 8000))
            } else if roll < 60 && managers >= 3 {
                // A majority: managers/2 + 1 of them, the seed picks which.
                let mut pool: Vec<usize> = (0..managers).collect();
                let mut chosen = Vec::new();
                while chosen.len() < managers / 2 + 1 {
                    let i = (rng.next_u64() % pool.len() as u64) as usize;
                    chosen.push(pool.remove(i));
                }
                chosen.sort_unstable();
                (Fault::Kill(chosen), ms(&mut rng, 5000, 10000))
            } else if roll < 80 {
                let n = (rng.next_u64() % nodes as u64) as usize;
                (Fault::Partition(n), ms(&mut rng, 3000, 8000))
            } else {
                let from = (rng.next_u64() % nodes as u64) as usize;
                let to = (from + 1 + (rng.next_u64() % (nodes as u64 - 1)) as usize) % nodes;
                let percent = [30, 50, 80, 100][(rng.next_u64() % 4) as usize];
                (Fault::Loss { from, to, percent }, ms(&mut rng, 3000, 8000))
            };
            episodes.push(Episode { at: t, hold, fault });
            t += hold + ms(&mut rng, 4000, 10000);
        }

        let mut writes = Vec::new();
        let mut wrng = Rng(seed.max(1) ^ 0x9e37_79b9_7f4a_7c15);
        let base = base_services(docker);
        // Services this schedule created and has not removed (by issue, not by outcome).
        let mut mine: Vec<String> = Vec::new();
        let mut created = 0u64;
        let mut seq = 0u64;
        let mut t = Duration::ZERO;
        while t < duration {
            let gap = ms(&mut wrng, 300, 2500);
            t += gap;
            let manager = (wrng.next_u64() % managers as u64) as usize;
            seq += 1;
            let roll = wrng.next_u64() % 100;
            let write = if roll < 12 && mine.len() < 3 {
                created += 1;
                let service = format!("x{created}");
                mine.push(service.clone());
                Write::Create {
                    service,
                    replicas: between(&mut wrng, 1, 2),
                }
            } else if roll < 20 && !mine.is_empty() {
                let i = (wrng.next_u64() % mine.len() as u64) as usize;
                Write::Rm {
                    service: mine.remove(i),
                }
            } else if roll < 50 {
                let all: Vec<String> = base
                    .iter()
                    .map(|s| s.to_string())
                    .chain(mine.iter().cloned())
                    .collect();
                let service = all[(wrng.next_u64() % all.len() as u64) as usize].clone();
                // The mesh services keep two replicas at least, so one task stopping
                // never leaves a port without a task.
                let lo = if service == "echo" || service == "web" {
                    2
                } else {
                    1
                };
                Write::Scale {
                    replicas: between(&mut wrng, lo, 3),
                    service,
                }
            } else if roll < 80 {
                let all: Vec<String> = base
                    .iter()
                    .map(|s| s.to_string())
                    .chain(mine.iter().cloned())
                    .collect();
                let service = all[(wrng.next_u64() % all.len() as u64) as usize].clone();
                Write::Update { service, seq }
            } else {
                Write::Label {
                    node: (wrng.next_u64() % nodes as u64) as usize,
                    seq,
                }
            };
            writes.push(PlannedWrite {
                gap,
                manager,
                write,
            });
        }
        Schedule { episodes, writes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule_and_kills_a_minority_or_a_majority() {
        let d = Duration::from_secs(300);
        let a = Schedule::new(42, 3, 3, d, true, true);
        let b = Schedule::new(42, 3, 3, d, true, true);
        assert_eq!(a.episodes, b.episodes);
        assert_eq!(a.writes, b.writes);
        let c = Schedule::new(43, 3, 3, d, true, true);
        assert_ne!(a.episodes, c.episodes);
        assert!(a.episodes.len() > 10, "{}", a.episodes.len());
        for e in &a.episodes {
            if let Fault::Kill(v) = &e.fault {
                let managers = v.iter().filter(|i| **i < 3).count();
                assert!(managers <= 1 || managers == 2 && e.majority(3), "{e:?}");
            }
            if let Fault::Loss { from, to, .. } = e.fault {
                assert_ne!(from, to);
                assert!(from < 6 && to < 6);
            }
        }
        assert!(
            a.episodes
                .iter()
                .any(|e| matches!(e.fault, Fault::ClockJump { .. })),
            "no clock jump in 300 s"
        );
        let plain = Schedule::new(42, 3, 3, d, true, false);
        assert!(
            !plain
                .episodes
                .iter()
                .any(|e| matches!(e.fault, Fault::ClockJump { .. }))
        );
        // Faults never overlap: each starts after the previous one was lifted.
        for w in a.episodes.windows(2) {
            assert!(w[1].at >= w[0].at + w[0].hold, "{w:?}");
        }
    }
}
