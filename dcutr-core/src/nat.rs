//! NAT behaviour discovery, in RFC 4787 terms, from observations of one
//! local socket.
//!
//! Feed [`NatObservations`] what observers (STUN servers, identify peers)
//! saw of one local socket: the observer's address and our mapped address
//! as that observer saw it, plus, where a STUN server offers RFC 5780
//! CHANGE-REQUEST, whether its answers from another IP or port came
//! through. [`NatObservations::classify`] turns them into a
//! [`NatBehaviour`]:
//!
//! * **mapping**: the same mapped address at two observers with different
//!   IP addresses means [`Mapping::EndpointIndependent`]; different
//!   mapped addresses at any two observers mean
//!   [`Mapping::EndpointDependent`];
//! * **allocation**: every mapped port equal to the local port is
//!   [`Allocation::Preserving`]; endpoint-dependent ports that step by the
//!   same small delta, in observation order, are
//!   [`Allocation::Sequential`]; enough distinct ports with no such
//!   pattern are [`Allocation::Random`];
//! * **filtering**: from the CHANGE-REQUEST probes, as RFC 5780 section
//!   4.4 describes.
//!
//! Whatever the evidence cannot tell stays `Unknown`. The result keeps the
//! evidence it rests on. [`Strategy::choose`] then says, from both peers'
//! behaviours, how a hole punch can go.
//!
//! Everything here is a pure function of its input: no clock, no
//! randomness, no hashing, and at most [`MAX_OBSERVATIONS`] observations
//! and [`MAX_FILTERING_PROBES`] probes are kept.

use std::fmt;
use std::net::SocketAddr;

use crate::addr::{AddressPredictor, Candidate, Transport};

/// Most observations kept for one socket; more are refused and counted.
///
/// Classification needs two observers, and a pattern of allocation three
/// distinct ports ([`MIN_PATTERN_PORTS`]). 16 covers a user's list of a
/// few STUN servers, each with its RFC 5780 other address, plus identify
/// observations from several peers, while bounding the memory one
/// (possibly hostile) stream of observations can take: 16 × 64 bytes.
pub const MAX_OBSERVATIONS: usize = 16;

/// Most filtering probe results kept; more are refused and counted.
///
/// RFC 5780 filtering discovery needs two probes (change IP and port,
/// change port) per server; 8 allows four servers.
pub const MAX_FILTERING_PROBES: usize = 8;

/// Largest step between consecutive mapped ports that still counts as
/// sequential allocation.
///
/// A sequential NAT hands out the next free port (RFC 4787 section 4.1
/// calls the pattern port "contiguity"); a small fixed step other than 1
/// comes from NATs that reserve port pairs or blocks. Beyond 16 a
/// prediction would need more guesses than the address budget of one
/// Connect (16 addresses) can carry.
pub const MAX_SEQUENTIAL_DELTA: u16 = 16;

/// Fewest distinct endpoint-dependent mapped ports before allocation is
/// called sequential or random.
///
/// Two ports always form a progression, so two cannot tell a pattern from
/// chance; with three, a uniformly random allocator over 64 512 ports
/// mimics a progression of step ≤ [`MAX_SEQUENTIAL_DELTA`] with
/// probability about 32 / 64 512 ≈ 0.05 %.
pub const MIN_PATTERN_PORTS: usize = 3;

/// Ports a NAT allocates from when it picks at random: 1024–65535, as
/// Linux `masquerade fully-random` does. The `R` of the birthday formula.
pub const EPHEMERAL_PORTS: u32 = 64_512;

/// Most ports [`SequentialPredictor`] guesses per transport.
///
/// The peer keeps at most 16 of our addresses (`MAX_REMOTE_ADDRS`); 6
/// guesses for each of TCP and QUIC leave room for four observed
/// addresses. With several hosts behind one sequential NAT, the next port
/// may go to another host, so a few guesses beat one.
pub const MAX_PREDICTED_PORTS: u8 = 6;

/// What one observer saw of our socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Observation {
    /// The observer's address: where our packet went.
    pub observer: SocketAddr,
    /// Our address as the observer saw it (STUN XOR-MAPPED-ADDRESS, or
    /// identify's observed address).
    pub mapped: SocketAddr,
    /// The observer is another address of a server observed too, learnt
    /// from its RFC 5780 OTHER-ADDRESS. Recorded as evidence; the
    /// classification only looks at the addresses.
    pub other_address: bool,
}

impl Observation {
    /// An observation by an independent observer.
    #[must_use]
    pub const fn new(observer: SocketAddr, mapped: SocketAddr) -> Self {
        Observation {
            observer,
            mapped,
            other_address: false,
        }
    }

    /// An observation by a server's RFC 5780 OTHER-ADDRESS.
    #[must_use]
    pub const fn other_address(observer: SocketAddr, mapped: SocketAddr) -> Self {
        Observation {
            observer,
            mapped,
            other_address: true,
        }
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} saw {}", self.observer, self.mapped)?;
        if self.other_address {
            f.write_str(" (other address)")?;
        }
        Ok(())
    }
}

/// What a filtering probe asked the server to change in its answer
/// (RFC 5780 CHANGE-REQUEST).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeChange {
    /// Answer from the other IP address and the other port (test II).
    IpAndPort,
    /// Answer from the same IP address, other port (test III).
    Port,
}

/// The result of one filtering probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilteringProbe {
    /// Where the answer came from.
    pub change: ProbeChange,
    /// Whether it reached our socket (within the caller's retries).
    pub received: bool,
}

impl fmt::Display for FilteringProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match self.change {
            ProbeChange::IpAndPort => "other IP and port",
            ProbeChange::Port => "other port",
        };
        let got = if self.received { "received" } else { "lost" };
        write!(f, "answer from {from}: {got}")
    }
}

/// Why an observation or probe was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// Already [`MAX_OBSERVATIONS`] observations or
    /// [`MAX_FILTERING_PROBES`] probes.
    #[error("over the limit of {max}")]
    Full {
        /// The limit.
        max: usize,
    },
    /// This observer was already heard: a second answer from it shows the
    /// same mapping, or a renewed one, not a new destination.
    #[error("observer {0} already observed")]
    DuplicateObserver(SocketAddr),
    /// The observer and mapped addresses, or this observation and the
    /// first one, are of different IP families.
    #[error("observation mixes IPv4 and IPv6")]
    FamilyMismatch,
    /// A port 0 mapped or observer address.
    #[error("port 0")]
    PortZero,
}

/// How the NAT maps our socket towards different destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapping {
    /// One mapped address for every destination (EIM).
    EndpointIndependent,
    /// A mapped address per destination address, or per address and port
    /// (address-dependent or address-and-port-dependent, "symmetric").
    EndpointDependent,
    /// Fewer than two observers, or only observers that share an IP
    /// address and agree (that could still be address-dependent).
    Unknown,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::EndpointDependent => "endpoint-dependent",
            Mapping::Unknown => "unknown",
        })
    }
}

/// How the NAT picks the external port of a new mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Allocation {
    /// The local port is kept.
    Preserving,
    /// Each new mapping takes the previous port plus `delta`
    /// (1 ≤ |delta| ≤ [`MAX_SEQUENTIAL_DELTA`]).
    Sequential {
        /// The step between consecutive mappings.
        delta: i32,
    },
    /// At least [`MIN_PATTERN_PORTS`] distinct ports with no pattern.
    Random,
    /// The observations cannot tell.
    Unknown,
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::Preserving => f.write_str("port-preserving"),
            Allocation::Sequential { delta } => write!(f, "sequential ({delta:+})"),
            Allocation::Random => f.write_str("random"),
            Allocation::Unknown => f.write_str("unknown"),
        }
    }
}

/// Which unsolicited packets the NAT lets through to a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filtering {
    /// From anyone (EIF, "full cone").
    EndpointIndependent,
    /// From any port of an address we sent to (ADF).
    AddressDependent,
    /// Only from the address and port we sent to (APDF).
    AddressAndPortDependent,
    /// No probes, or probes that contradict each other.
    Unknown,
}

impl fmt::Display for Filtering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
            Filtering::Unknown => "unknown",
        })
    }
}

/// What a classification rests on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Evidence {
    /// The local socket observed.
    pub local: SocketAddr,
    /// The observations kept, in the order given.
    pub observations: Vec<Observation>,
    /// The filtering probe results kept, in the order given.
    pub probes: Vec<FilteringProbe>,
    /// Observations and probes refused (over the limit, duplicate
    /// observer, mixed families, port 0).
    pub refused: u32,
}

/// A NAT's behaviour as far as the observations tell, with the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatBehaviour {
    /// How mappings depend on the destination.
    pub mapping: Mapping,
    /// How external ports are picked.
    pub allocation: Allocation,
    /// Which unsolicited packets come through.
    pub filtering: Filtering,
    /// What it rests on. Empty for a behaviour a peer declared.
    pub evidence: Evidence,
}

impl NatBehaviour {
    /// A behaviour known without evidence, such as the one a peer
    /// declares. `local` is the socket it describes, if known (else
    /// unspecified).
    #[must_use]
    pub fn declared(
        mapping: Mapping,
        allocation: Allocation,
        filtering: Filtering,
        local: SocketAddr,
    ) -> Self {
        NatBehaviour {
            mapping,
            allocation,
            filtering,
            evidence: Evidence {
                local,
                observations: Vec::new(),
                probes: Vec::new(),
                refused: 0,
            },
        }
    }
}

impl fmt::Display for NatBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mapping {}, allocation {}, filtering {}",
            self.mapping, self.allocation, self.filtering
        )?;
        let e = &self.evidence;
        if !e.observations.is_empty() || !e.probes.is_empty() {
            write!(f, " (local {}", e.local)?;
            for o in &e.observations {
                write!(f, "; {o}")?;
            }
            for p in &e.probes {
                write!(f, "; {p}")?;
            }
            if e.refused > 0 {
                write!(f, "; {} refused", e.refused)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Observations of one local socket, bounded, ready to classify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatObservations {
    local: SocketAddr,
    observations: Vec<Observation>,
    probes: Vec<FilteringProbe>,
    refused: u32,
}

impl NatObservations {
    /// No observations yet of the socket bound at `local` (its port is
    /// what port preservation is judged against).
    #[must_use]
    pub fn new(local: SocketAddr) -> Self {
        NatObservations {
            local,
            observations: Vec::new(),
            probes: Vec::new(),
            refused: 0,
        }
    }

    /// Adds what one observer saw.
    ///
    /// # Errors
    /// [`ObserveError::Full`] past [`MAX_OBSERVATIONS`],
    /// [`ObserveError::DuplicateObserver`] for an observer already heard,
    /// [`ObserveError::FamilyMismatch`] when the observation mixes IPv4
    /// and IPv6 or differs in family from the first one,
    /// [`ObserveError::PortZero`] for port 0. Each refusal is counted in
    /// [`Evidence::refused`].
    pub fn observe(&mut self, observation: Observation) -> Result<(), ObserveError> {
        let verdict = self.admit(&observation);
        match verdict {
            Ok(()) => self.observations.push(observation),
            Err(reason) => {
                tracing::debug!(%reason, %observation, "refused a NAT observation");
                self.refused = self.refused.saturating_add(1);
            }
        }
        verdict
    }

    fn admit(&self, o: &Observation) -> Result<(), ObserveError> {
        if o.observer.port() == 0 || o.mapped.port() == 0 {
            return Err(ObserveError::PortZero);
        }
        let family = o.observer.is_ipv4();
        let first = self.observations.first().map(|f| f.observer.is_ipv4());
        if o.mapped.is_ipv4() != family || first.is_some_and(|f| f != family) {
            return Err(ObserveError::FamilyMismatch);
        }
        if self.observations.iter().any(|p| p.observer == o.observer) {
            return Err(ObserveError::DuplicateObserver(o.observer));
        }
        if self.observations.len() >= MAX_OBSERVATIONS {
            return Err(ObserveError::Full {
                max: MAX_OBSERVATIONS,
            });
        }
        Ok(())
    }

    /// Adds the result of one filtering probe.
    ///
    /// # Errors
    /// [`ObserveError::Full`] past [`MAX_FILTERING_PROBES`], counted in
    /// [`Evidence::refused`].
    pub fn probe(&mut self, probe: FilteringProbe) -> Result<(), ObserveError> {
        if self.probes.len() >= MAX_FILTERING_PROBES {
            self.refused = self.refused.saturating_add(1);
            return Err(ObserveError::Full {
                max: MAX_FILTERING_PROBES,
            });
        }
        self.probes.push(probe);
        Ok(())
    }

    /// The observations kept, in order.
    #[must_use]
    pub fn observations(&self) -> &[Observation] {
        &self.observations
    }

    /// Observations and probes refused so far.
    #[must_use]
    pub fn refused(&self) -> u32 {
        self.refused
    }

    /// What the observations tell about the NAT.
    #[must_use]
    pub fn classify(&self) -> NatBehaviour {
        let mapping = self.mapping();
        NatBehaviour {
            mapping,
            allocation: self.allocation(mapping),
            filtering: self.filtering(),
            evidence: Evidence {
                local: self.local,
                observations: self.observations.clone(),
                probes: self.probes.clone(),
                refused: self.refused,
            },
        }
    }

    fn mapping(&self) -> Mapping {
        let obs = &self.observations;
        let Some(first) = obs.first() else {
            return Mapping::Unknown;
        };
        // Observers are distinct (duplicates are refused), so any
        // disagreement is a mapping that varies with the destination.
        if obs.iter().any(|o| o.mapped != first.mapped) {
            return Mapping::EndpointDependent;
        }
        // Agreement proves independence only across observer IP
        // addresses: an address-dependent NAT also agrees across the ports
        // of one address.
        if obs.iter().any(|o| o.observer.ip() != first.observer.ip()) {
            Mapping::EndpointIndependent
        } else {
            Mapping::Unknown
        }
    }

    fn allocation(&self, mapping: Mapping) -> Allocation {
        if self.observations.is_empty() {
            return Allocation::Unknown;
        }
        let local = self.local.port();
        if self.observations.iter().all(|o| o.mapped.port() == local) {
            return Allocation::Preserving;
        }
        if mapping != Mapping::EndpointDependent {
            // One external port: nothing to learn about how new ones are
            // picked.
            return Allocation::Unknown;
        }
        // Distinct ports in the order they were first seen (at most
        // MAX_OBSERVATIONS, so the quadratic search is bounded).
        let mut ports: Vec<i32> = Vec::with_capacity(self.observations.len());
        for o in &self.observations {
            let port = i32::from(o.mapped.port());
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        if ports.len() < MIN_PATTERN_PORTS {
            return Allocation::Unknown;
        }
        let delta = ports[1] - ports[0];
        let steady = ports.windows(2).all(|w| w[1] - w[0] == delta);
        if steady && delta.unsigned_abs() <= u32::from(MAX_SEQUENTIAL_DELTA) {
            // Distinct ports, so delta is never 0.
            Allocation::Sequential { delta }
        } else {
            Allocation::Random
        }
    }

    fn filtering(&self) -> Filtering {
        let heard = |change: ProbeChange| {
            let mut results = self.probes.iter().filter(|p| p.change == change);
            // Any answer that came through shows the filter lets it pass;
            // a lost one may be loss.
            results
                .next()
                .map(|first| first.received || results.any(|p| p.received))
        };
        match (heard(ProbeChange::IpAndPort), heard(ProbeChange::Port)) {
            (Some(true), Some(false)) => Filtering::Unknown,
            (Some(true), _) => Filtering::EndpointIndependent,
            (Some(false), Some(true)) => Filtering::AddressDependent,
            (_, Some(false)) => Filtering::AddressAndPortDependent,
            _ => Filtering::Unknown,
        }
    }
}

/// Which side of a pair has the hard NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HardSide {
    /// Us.
    Ours,
    /// The peer.
    Peer,
}

impl fmt::Display for HardSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HardSide::Ours => "ours",
            HardSide::Peer => "peer's",
        })
    }
}

/// How a hole punch between two NATs can go, from both behaviours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Strategy {
    /// Both mappings are endpoint-independent (or port-preserving, or not
    /// known to be otherwise): punch the observed addresses, as the spec
    /// does.
    Direct,
    /// One side or both allocate sequentially: that side sends the next
    /// ports (its last mapped port plus multiples of its delta) as
    /// predicted addresses in Connect. The deltas are those of the
    /// sequential sides.
    PredictSequential {
        /// Our delta, if we are sequential.
        ours: Option<i32>,
        /// The peer's delta, if it is sequential.
        peer: Option<i32>,
    },
    /// One endpoint-dependent side with random (or unknown) allocation,
    /// one endpoint-independent (or unknown) side: the birthday punch. The hard side
    /// opens `N` fresh sockets towards the easy side's address; the easy
    /// side probes `M` random ports of the hard side's IP. With `R`
    /// ports to pick from ([`EPHEMERAL_PORTS`]), the chance that a probe
    /// meets an open mapping is
    ///
    /// ```text
    /// P = 1 − (1 − N/R)^M
    /// ```
    ///
    /// ([`birthday_success`]): 256 × 1024 gives 98.3 %, 256 × 2048
    /// 99.97 %; the first hit comes after about R/N probes.
    Birthday {
        /// The side with the random mapping.
        hard_side: HardSide,
    },
    /// Both sides endpoint-dependent and at least one random (or with an
    /// allocation the observations could not tell): each probe of one
    /// side opens a new unpredictable mapping on the other, so meeting
    /// needs about 170 000 probes. Do not try; fail at once with this
    /// reason, which names both allocations.
    Impossible {
        /// Our allocation.
        ours: Allocation,
        /// The peer's allocation.
        peer: Allocation,
    },
}

/// How hard one side is to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hardness {
    Easy,
    Sequential(i32),
    Random,
}

fn hardness(b: &NatBehaviour) -> Hardness {
    match (b.mapping, b.allocation) {
        (Mapping::EndpointDependent, Allocation::Sequential { delta }) => {
            Hardness::Sequential(delta)
        }
        // Every new mapping keeps the local port, which is what we
        // advertise.
        (Mapping::EndpointDependent, Allocation::Preserving) => Hardness::Easy,
        // Random, or not enough ports to tell: nothing to predict.
        (Mapping::EndpointDependent, _) => Hardness::Random,
        // Independent, or unknown: nothing better than the spec to try.
        _ => Hardness::Easy,
    }
}

impl Strategy {
    /// The strategy for a punch between `ours` and the `peer`'s NAT.
    ///
    /// A pure function of the two behaviours' mapping and allocation;
    /// swapping the arguments swaps the sides in the result.
    #[must_use]
    pub fn choose(ours: &NatBehaviour, peer: &NatBehaviour) -> Strategy {
        match (hardness(ours), hardness(peer)) {
            (Hardness::Easy, Hardness::Easy) => Strategy::Direct,
            (Hardness::Sequential(a), Hardness::Easy) => Strategy::PredictSequential {
                ours: Some(a),
                peer: None,
            },
            (Hardness::Easy, Hardness::Sequential(b)) => Strategy::PredictSequential {
                ours: None,
                peer: Some(b),
            },
            (Hardness::Sequential(a), Hardness::Sequential(b)) => Strategy::PredictSequential {
                ours: Some(a),
                peer: Some(b),
            },
            (Hardness::Random, Hardness::Easy) => Strategy::Birthday {
                hard_side: HardSide::Ours,
            },
            (Hardness::Easy, Hardness::Random) => Strategy::Birthday {
                hard_side: HardSide::Peer,
            },
            (Hardness::Random | Hardness::Sequential(_), _) => Strategy::Impossible {
                ours: ours.allocation,
                peer: peer.allocation,
            },
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Direct => f.write_str("direct"),
            Strategy::PredictSequential { ours, peer } => {
                f.write_str("predict sequential ports")?;
                if let Some(d) = ours {
                    write!(f, ", ours {d:+}")?;
                }
                if let Some(d) = peer {
                    write!(f, ", peer's {d:+}")?;
                }
                Ok(())
            }
            Strategy::Birthday { hard_side } => {
                write!(f, "birthday punch, hard side {hard_side}")
            }
            Strategy::Impossible { ours, peer } => write!(
                f,
                "impossible: both endpoint-dependent (ours {ours}, peer's {peer})"
            ),
        }
    }
}

/// The chance that the birthday punch meets: `P = 1 − (1 − N/R)^M` for
/// `sockets` (N) open mappings on the hard side, `probes` (M) random
/// probes from the easy side, over `range` (R) ports. 0 when `range` is
/// 0; 1 when `sockets` ≥ `range` and `probes` > 0.
#[must_use]
pub fn birthday_success(sockets: u32, probes: u32, range: u32) -> f64 {
    if range == 0 {
        return 0.0;
    }
    let miss = 1.0 - (f64::from(sockets) / f64::from(range)).min(1.0);
    let probes = i32::try_from(probes).unwrap_or(i32::MAX);
    1.0 - miss.powi(probes)
}

/// Guesses the next mapped ports of a sequential NAT, for the addresses
/// we send in Connect ("observed and possibly predicted").
///
/// For the most recently observed address of its transport it appends the
/// next `count` ports, `delta` apart; ports past 1 or 65535 are not
/// guessed. The core filters, deduplicates and caps the guesses like any
/// other address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequentialPredictor {
    transport: Transport,
    delta: i32,
    count: u8,
}

impl SequentialPredictor {
    /// Guesses `count` (at most [`MAX_PREDICTED_PORTS`]) ports `delta`
    /// apart for `transport`.
    #[must_use]
    pub fn new(transport: Transport, delta: i32, count: u8) -> Self {
        SequentialPredictor {
            transport,
            delta,
            count: count.min(MAX_PREDICTED_PORTS),
        }
    }

    /// The predictor for a behaviour observed on a `transport` socket:
    /// `Some` only for an endpoint-dependent mapping with sequential
    /// allocation.
    #[must_use]
    pub fn for_behaviour(b: &NatBehaviour, transport: Transport, count: u8) -> Option<Self> {
        match (b.mapping, b.allocation) {
            (Mapping::EndpointDependent, Allocation::Sequential { delta }) => {
                Some(SequentialPredictor::new(transport, delta, count))
            }
            _ => None,
        }
    }
}

/// Ports the core guesses on its own when our NAT is sequential and the
/// caller set no predictor of its own: the peer dials at most
/// `MAX_PUNCHES_PER_IP` = 4 of our addresses on one IP per attempt, and
/// our Connect carries the observed address first, so three guesses are
/// what the peer can try.
pub const OWN_NAT_PREDICTED_PORTS: u8 = 3;

/// Guesses for our own sequential NAT, from what discovery saw: the
/// mapping our next new flow gets follows the last one an observer saw
/// (the NAT's most recent), `delta` on. Unlike [`SequentialPredictor`],
/// which continues from the address we advertise, this starts from the
/// evidence, since the advertised address may be older (the relay's
/// observation, made before the STUN servers').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwnNatPredictor {
    last: SocketAddr,
    delta: i32,
}

impl OwnNatPredictor {
    /// `Some` for an endpoint-dependent mapping with sequential allocation
    /// and at least one observation.
    pub(crate) fn for_behaviour(b: &NatBehaviour) -> Option<Self> {
        let (Mapping::EndpointDependent, Allocation::Sequential { delta }) =
            (b.mapping, b.allocation)
        else {
            return None;
        };
        let last = b.evidence.observations.last()?.mapped;
        Some(OwnNatPredictor { last, delta })
    }
}

impl AddressPredictor for OwnNatPredictor {
    /// For each transport we advertise an address of on the observed IP:
    /// the next [`OWN_NAT_PREDICTED_PORTS`] mappings.
    fn predict(&mut self, observed: &[Candidate], out: &mut Vec<Candidate>) {
        for transport in [Transport::Tcp, Transport::Quic] {
            let advertised = observed
                .iter()
                .any(|c| c.transport == transport && c.addr.ip() == self.last.ip());
            if !advertised {
                continue;
            }
            let base = Candidate {
                transport,
                addr: self.last,
            };
            SequentialPredictor::new(transport, self.delta, OWN_NAT_PREDICTED_PORTS)
                .predict(&[base], out);
        }
    }
}

impl AddressPredictor for SequentialPredictor {
    fn predict(&mut self, observed: &[Candidate], out: &mut Vec<Candidate>) {
        let Some(last) = observed.iter().find(|c| c.transport == self.transport) else {
            return;
        };
        let mut port = i32::from(last.addr.port());
        for _ in 0..self.count {
            port = port.saturating_add(self.delta);
            let Ok(next) = u16::try_from(port) else {
                break;
            };
            if next == 0 {
                break;
            }
            let mut guess = *last;
            guess.addr.set_port(next);
            out.push(guess);
        }
    }
}
