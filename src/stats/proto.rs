//! V2Ray 4.34's `v2ray.core.app.stats.command` messages (`app/stats/command/command.proto`), written as
//! prost structs by hand: seven small messages do not justify a build-time protoc.

/// `GetStatsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetStatsRequest {
    /// Exact counter name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Set the counter to 0 (the response has the value before).
    #[prost(bool, tag = "2")]
    pub reset: bool,
}

/// `Stat`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stat {
    /// Counter name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Counter value.
    #[prost(int64, tag = "2")]
    pub value: i64,
}

/// `GetStatsResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetStatsResponse {
    /// The counter.
    #[prost(message, optional, tag = "1")]
    pub stat: Option<Stat>,
}

/// `QueryStatsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryStatsRequest {
    /// Substring of the names to report ("" = all).
    #[prost(string, tag = "1")]
    pub pattern: String,
    /// Set the reported counters to 0.
    #[prost(bool, tag = "2")]
    pub reset: bool,
}

/// `QueryStatsResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryStatsResponse {
    /// Matching counters.
    #[prost(message, repeated, tag = "1")]
    pub stat: Vec<Stat>,
}

/// `SysStatsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysStatsRequest {}

/// `SysStatsResponse` (Go runtime figures in 4.34; oxray fills what it has, see docs/OPERATIONS.md).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysStatsResponse {
    /// Go: goroutines. oxray: live tokio tasks.
    #[prost(uint32, tag = "1")]
    pub num_goroutine: u32,
    /// Go: GC cycles. oxray: 0.
    #[prost(uint32, tag = "2")]
    pub num_gc: u32,
    /// Go: heap bytes allocated. oxray: resident set size.
    #[prost(uint64, tag = "3")]
    pub alloc: u64,
    /// Go: cumulative heap bytes. oxray: 0.
    #[prost(uint64, tag = "4")]
    pub total_alloc: u64,
    /// Go: bytes from the OS. oxray: virtual memory size.
    #[prost(uint64, tag = "5")]
    pub sys: u64,
    /// Go: mallocs. oxray: 0.
    #[prost(uint64, tag = "6")]
    pub mallocs: u64,
    /// Go: frees. oxray: 0.
    #[prost(uint64, tag = "7")]
    pub frees: u64,
    /// Go: mallocs − frees. oxray: 0.
    #[prost(uint64, tag = "8")]
    pub live_objects: u64,
    /// Go: GC pause total. oxray: 0.
    #[prost(uint64, tag = "9")]
    pub pause_total_ns: u64,
    /// Seconds since the instance started.
    #[prost(uint32, tag = "10")]
    pub uptime: u32,
}
