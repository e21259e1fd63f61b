//! V2Ray's `geoip.dat` / `geosite.dat`: one bare protobuf `GeoIPList` / `GeoSiteList` each
//! (`app/router/config.proto` of 4.34), found where 4.34 looks for them.
//!
//! Loading is lazy and shared: a file is read once per config load, and only the lists the config
//! names are decoded (each entry's code is read first; the rest of an entry is skipped unless wanted).
//! A list named by several rules is decoded once and shared (`Arc`). 4.34 re-reads and re-decodes the
//! whole file for every reference; none of this is observable except in time and memory.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prost::Message;

use super::ip::IpSet;
use crate::config::DomainMatcher;

// The messages, written by hand from config.proto (field numbers and types are the wire contract).

/// A whole file, each entry kept as its undecoded bytes (zero-copy slices of the file).
#[derive(Clone, PartialEq, Message)]
struct RawList {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    entry: Vec<Bytes>,
}

/// Only the code of an entry: the rest is skipped without being decoded.
#[derive(Clone, PartialEq, Message)]
struct CodeOnly {
    #[prost(string, tag = "1")]
    country_code: String,
}

/// `GeoIP`.
#[derive(Clone, PartialEq, Message)]
struct GeoIp {
    #[prost(string, tag = "1")]
    country_code: String,
    #[prost(message, repeated, tag = "2")]
    cidr: Vec<Cidr>,
}

/// `CIDR`.
#[derive(Clone, PartialEq, Message)]
struct Cidr {
    #[prost(bytes = "vec", tag = "1")]
    ip: Vec<u8>,
    #[prost(uint32, tag = "2")]
    prefix: u32,
}

/// `GeoSite`.
#[derive(Clone, PartialEq, Message)]
struct GeoSite {
    #[prost(string, tag = "1")]
    country_code: String,
    #[prost(message, repeated, tag = "2")]
    domain: Vec<Domain>,
}

/// `Domain`.
#[derive(Clone, PartialEq, Message)]
struct Domain {
    /// Plain = 0, Regex = 1, Domain = 2, Full = 3.
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(string, tag = "2")]
    value: String,
    #[prost(message, repeated, tag = "3")]
    attribute: Vec<Attribute>,
}

/// `Domain.Attribute`: only the key matters to 4.34 (its value is ignored).
#[derive(Clone, PartialEq, Message)]
struct Attribute {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(oneof = "TypedValue", tags = "2, 3")]
    typed_value: Option<TypedValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum TypedValue {
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
}

/// One geosite list, filtered by its attributes, ready for the domain index.
pub struct GeoSiteList {
    /// The reference as written, e.g. `geosite:cn@ads`.
    pub name: String,
    /// The entries, as `domain` conditions.
    pub entries: Vec<DomainMatcher>,
}

impl PartialEq for GeoSiteList {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.entries == other.entries
    }
}

impl Eq for GeoSiteList {}

impl fmt::Debug for GeoSiteList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} entries)", self.name, self.entries.len())
    }
}

/// One geoip list as merged ranges.
pub struct GeoIpList {
    /// The reference as written, e.g. `geoip:cn`.
    pub name: String,
    pub(crate) set: IpSet,
    /// CIDRs in the file's list.
    pub cidrs: usize,
}

impl GeoIpList {
    /// True if `ip` (already canonical: IPv4-mapped turned into IPv4) is in the list.
    #[inline]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.set.contains(ip)
    }
}

impl fmt::Debug for GeoIpList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} CIDRs)", self.name, self.cidrs)
    }
}

/// Why a list could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeoError {
    /// The file is nowhere 4.34 looks.
    #[error("cannot find {file} (looked for {}; set V2RAY_LOCATION_ASSET to the directory that holds it)", .looked.join(", "))]
    NotFound {
        /// The file name as referenced.
        file: String,
        /// Every candidate path, in order.
        looked: Vec<String>,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// Path.
        path: String,
        /// OS error.
        message: String,
    },
    /// Not a valid GeoIPList/GeoSiteList.
    #[error("{path} is not a valid V2Ray {what} file: {message}")]
    Corrupt {
        /// Path.
        path: String,
        /// `geoip`/`geosite`.
        what: &'static str,
        /// Decoder message.
        message: String,
    },
    /// No list with that code.
    #[error("list {code:?} not found in {path} ({count} lists in the file; codes are matched ignoring case)")]
    NoCode {
        /// Code as referenced.
        code: String,
        /// File path.
        path: String,
        /// Lists in the file.
        count: usize,
    },
    /// A bad entry inside the chosen list.
    #[error("{path}, list {code:?}: {message}")]
    BadEntry {
        /// File path.
        path: String,
        /// Code.
        code: String,
        /// What is wrong.
        message: String,
    },
    /// Attributes selected nothing (4.34 then silently drops the condition, which can widen a rule).
    #[error("{reference}: no entry of list {code:?} in {path} has the attribute(s) {attrs:?}")]
    NoAttr {
        /// The reference.
        reference: String,
        /// Code.
        code: String,
        /// Path.
        path: String,
        /// Attributes asked for.
        attrs: Vec<String>,
    },
}

/// Where 4.34 looks for asset files (`common/platform/others.go GetAssetLocation`, `filesystem.ReadAsset`).
#[derive(Debug, Clone)]
pub struct Assets {
    /// The asset directory: `v2ray.location.asset`, else `V2RAY_LOCATION_ASSET`, else the executable's dir.
    pub dir: PathBuf,
    /// Tried after `dir`, in order.
    pub fallbacks: Vec<PathBuf>,
}

impl Assets {
    /// From the environment, as 4.34 does. A variable set to "" means the working directory.
    pub fn from_env() -> Assets {
        let var = std::env::var_os("v2ray.location.asset").or_else(|| std::env::var_os("V2RAY_LOCATION_ASSET"));
        let dir = match var {
            Some(v) => PathBuf::from(v),
            None => std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default(),
        };
        Assets::in_dir(dir)
    }

    /// `dir` first, then the usual install paths.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Assets {
        Assets {
            dir: dir.into(),
            fallbacks: vec![PathBuf::from("/usr/local/share/v2ray"), PathBuf::from("/usr/share/v2ray")],
        }
    }

    /// The candidates for `file`. Joined, not resolved, as Go's `filepath.Join`: `/abs/x.dat` is looked
    /// for under each directory.
    pub fn candidates(&self, file: &str) -> Vec<PathBuf> {
        let rel = file.trim_start_matches('/');
        std::iter::once(&self.dir).chain(&self.fallbacks).map(|d| d.join(rel)).collect()
    }
}

/// A file read once: each entry's (upper-cased code, bytes).
struct File {
    path: String,
    entries: Vec<(String, Bytes)>,
}

/// Reads files once per load and hands out shared lists.
pub struct GeoLoader {
    assets: Assets,
    files: HashMap<String, Result<Arc<File>, GeoError>>,
    sites: HashMap<(String, String, Vec<String>), Arc<GeoSiteList>>,
    ips: HashMap<(String, String), Arc<GeoIpList>>,
}

impl fmt::Debug for GeoLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoLoader").field("assets", &self.assets).field("files", &self.files.len()).finish()
    }
}

impl Default for GeoLoader {
    fn default() -> Self {
        GeoLoader::new(Assets::from_env())
    }
}

fn index_file(path: &str, data: Bytes, what: &'static str) -> Result<File, GeoError> {
    let corrupt = |e: prost::DecodeError| GeoError::Corrupt { path: path.to_string(), what, message: e.to_string() };
    let raw = RawList::decode(data).map_err(corrupt)?;
    let mut entries = Vec::with_capacity(raw.entry.len());
    for e in raw.entry {
        let code = CodeOnly::decode(e.clone()).map_err(corrupt)?.country_code.to_uppercase();
        entries.push((code, e));
    }
    Ok(File { path: path.to_string(), entries })
}

impl GeoLoader {
    /// A loader reading from `assets`.
    pub fn new(assets: Assets) -> GeoLoader {
        GeoLoader { assets, files: HashMap::new(), sites: HashMap::new(), ips: HashMap::new() }
    }

    fn file(&mut self, name: &str, what: &'static str) -> Result<Arc<File>, GeoError> {
        if let Some(r) = self.files.get(name) {
            return r.clone();
        }
        let candidates = self.assets.candidates(name);
        let r = match candidates.iter().find(|p| p.exists()) {
            None => Err(GeoError::NotFound {
                file: name.to_string(),
                looked: candidates.iter().map(|p| p.display().to_string()).collect(),
            }),
            Some(p) => {
                let path = p.display().to_string();
                match std::fs::read(p) {
                    Ok(data) => index_file(&path, Bytes::from(data), what).map(Arc::new),
                    Err(e) => Err(GeoError::Read { path, message: e.to_string() }),
                }
            }
        };
        self.files.insert(name.to_string(), r.clone());
        r
    }

    /// The geosite list `code` of `file`, keeping only entries that carry every attribute in `attrs`.
    pub fn site(
        &mut self,
        reference: &str,
        file: &str,
        code: &str,
        attrs: &[String],
    ) -> Result<Arc<GeoSiteList>, GeoError> {
        let key = (file.to_string(), code.to_uppercase(), attrs.to_vec());
        if let Some(l) = self.sites.get(&key) {
            return Ok(l.clone());
        }
        let f = self.file(file, "geosite")?;
        let list = site_list(&f, reference, code, attrs)?;
        let list = Arc::new(list);
        self.sites.insert(key, list.clone());
        Ok(list)
    }

    /// The geoip list `code` of `file`.
    pub fn ip(&mut self, reference: &str, file: &str, code: &str) -> Result<Arc<GeoIpList>, GeoError> {
        let key = (file.to_string(), code.to_uppercase());
        if let Some(l) = self.ips.get(&key) {
            return Ok(l.clone());
        }
        let f = self.file(file, "geoip")?;
        let list = Arc::new(ip_list(&f, reference, code)?);
        self.ips.insert(key, list.clone());
        Ok(list)
    }
}

/// The first entry whose code equals `code` ignoring case (as Go's `EqualFold`; first wins).
fn find<'f>(f: &'f File, code: &str) -> Result<&'f Bytes, GeoError> {
    let upper = code.to_uppercase();
    f.entries.iter().find(|(c, _)| *c == upper).map(|(_, b)| b).ok_or_else(|| GeoError::NoCode {
        code: code.to_string(),
        path: f.path.clone(),
        count: f.entries.len(),
    })
}

fn site_list(f: &File, reference: &str, code: &str, attrs: &[String]) -> Result<GeoSiteList, GeoError> {
    let bad = |message: String| GeoError::BadEntry { path: f.path.clone(), code: code.to_string(), message };
    let site = GeoSite::decode(find(f, code)?.clone()).map_err(|e| GeoError::Corrupt {
        path: f.path.clone(),
        what: "geosite",
        message: e.to_string(),
    })?;
    let mut entries = Vec::with_capacity(site.domain.len());
    for d in site.domain {
        // An attribute is carried when its key matches ignoring case; its value does not matter.
        if !attrs.iter().all(|a| d.attribute.iter().any(|x| x.key.eq_ignore_ascii_case(a))) {
            continue;
        }
        entries.push(match d.r#type {
            0 => DomainMatcher::Keyword(d.value),
            1 => {
                regex::Regex::new(&d.value).map_err(|e| bad(format!("invalid regexp {:?}: {e}", d.value)))?;
                DomainMatcher::Regexp(d.value)
            }
            2 => DomainMatcher::Domain(d.value),
            3 => DomainMatcher::Full(d.value),
            t => return Err(bad(format!("unsupported domain type {t} (value {:?})", d.value))),
        });
    }
    if entries.is_empty() && !attrs.is_empty() {
        return Err(GeoError::NoAttr {
            reference: reference.to_string(),
            code: code.to_string(),
            path: f.path.clone(),
            attrs: attrs.to_vec(),
        });
    }
    entries.shrink_to_fit();
    Ok(GeoSiteList { name: reference.to_string(), entries })
}

fn ip_list(f: &File, reference: &str, code: &str) -> Result<GeoIpList, GeoError> {
    let bad = |message: String| GeoError::BadEntry { path: f.path.clone(), code: code.to_string(), message };
    let geo = GeoIp::decode(find(f, code)?.clone()).map_err(|e| GeoError::Corrupt {
        path: f.path.clone(),
        what: "geoip",
        message: e.to_string(),
    })?;
    let mut nets = Vec::with_capacity(geo.cidr.len());
    for c in &geo.cidr {
        let prefix = u8::try_from(c.prefix).unwrap_or(u8::MAX);
        // 4.34 accepts prefixes beyond 32/128 and then matches everything: refuse them instead.
        let net = match c.ip.len() {
            4 => {
                let a: [u8; 4] = c.ip[..].try_into().map_err(|_| bad("bad IPv4".into()))?;
                Ipv4Net::new(a.into(), prefix).map(IpNet::V4)
            }
            16 => {
                let a: [u8; 16] = c.ip[..].try_into().map_err(|_| bad("bad IPv6".into()))?;
                Ipv6Net::new(a.into(), prefix).map(IpNet::V6)
            }
            n => return Err(bad(format!("an IP of {n} bytes (expected 4 or 16)"))),
        }
        .map_err(|_| bad(format!("prefix /{} is too long for a {}-byte IP", c.prefix, c.ip.len())))?;
        nets.push(net);
    }
    Ok(GeoIpList { name: reference.to_string(), set: IpSet::new(&nets), cidrs: nets.len() })
}

/// Decodes `data` as a geosite file and builds list `code` (for the fuzz target and tools).
pub fn parse_site(data: &[u8], code: &str, attrs: &[String]) -> Result<GeoSiteList, GeoError> {
    let f = index_file("<bytes>", Bytes::copy_from_slice(data), "geosite")?;
    site_list(&f, code, code, attrs)
}

/// Decodes `data` as a geoip file and builds list `code` (for the fuzz target and tools).
pub fn parse_ip(data: &[u8], code: &str) -> Result<GeoIpList, GeoError> {
    let f = index_file("<bytes>", Bytes::copy_from_slice(data), "geoip")?;
    ip_list(&f, code, code)
}

/// The codes in a geosite or geoip file, in file order (for error messages and tools).
pub fn codes(data: &[u8]) -> Result<Vec<String>, GeoError> {
    Ok(index_file("<bytes>", Bytes::copy_from_slice(data), "geo")?.entries.into_iter().map(|(c, _)| c).collect())
}

/// One geosite entry for [`encode_site_file`]: (type: Plain 0, Regex 1, Domain 2, Full 3; value;
/// attribute keys, each with `bool_value` true).
pub type SiteEntry<'a> = (i32, &'a str, &'a [&'a str]);

/// Writes a `GeoSiteList` (for tests, benches and tools that make small files).
#[doc(hidden)]
pub fn encode_site_file(lists: &[(&str, &[SiteEntry<'_>])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (code, entries) in lists {
        let site = GeoSite {
            country_code: code.to_string(),
            domain: entries
                .iter()
                .map(|(t, v, attrs)| Domain {
                    r#type: *t,
                    value: v.to_string(),
                    attribute: attrs
                        .iter()
                        .map(|k| Attribute { key: k.to_string(), typed_value: Some(TypedValue::Bool(true)) })
                        .collect(),
                })
                .collect(),
        };
        prost::encoding::message::encode(1, &site, &mut out);
    }
    out
}

/// Writes a `GeoIPList` from (code, CIDRs) (for tests, benches and tools).
#[doc(hidden)]
pub fn encode_ip_file(lists: &[(&str, &[IpNet])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (code, nets) in lists {
        let geo = GeoIp {
            country_code: code.to_string(),
            cidr: nets
                .iter()
                .map(|n| Cidr {
                    ip: match n.network() {
                        std::net::IpAddr::V4(a) => a.octets().to_vec(),
                        std::net::IpAddr::V6(a) => a.octets().to_vec(),
                    },
                    prefix: n.prefix_len().into(),
                })
                .collect(),
        };
        prost::encoding::message::encode(1, &geo, &mut out);
    }
    out
}

/// A geo reference in a routing `domain` or `ip` entry, split as 4.34 does (`infra/conf/router.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoRef {
    /// The file name (`geosite.dat`, `geoip.dat`, or the `ext:` file).
    pub file: String,
    /// The list code.
    pub code: String,
    /// Attributes (geosite only), trimmed and lower-cased, empty ones dropped.
    pub attrs: Vec<String>,
}

/// Parses a `domain` entry's geo reference; None if `s` is not one. The prefix test is case-sensitive.
pub fn site_ref(s: &str) -> Option<Result<GeoRef, String>> {
    let (file, rest) = if let Some(r) = s.strip_prefix("geosite:") {
        ("geosite.dat".to_string(), r.to_string())
    } else if let Some(r) = s.strip_prefix("ext:").or_else(|| s.strip_prefix("ext-domain:")) {
        match ext_parts(r) {
            Ok((f, c)) => (f, c),
            Err(e) => return Some(Err(e)),
        }
    } else {
        return None;
    };
    let mut parts = rest.split('@');
    let code = parts.next().unwrap_or("").trim().to_string();
    if code.is_empty() {
        return Some(Err(format!("empty listname in rule {s:?}")));
    }
    let attrs = parts.map(|a| a.trim().to_lowercase()).filter(|a| !a.is_empty()).collect();
    Some(Ok(GeoRef { file, code, attrs }))
}

/// Parses an `ip`/`source` entry's geo reference; None if `s` is not one.
pub fn ip_ref(s: &str) -> Option<Result<GeoRef, String>> {
    if let Some(code) = s.strip_prefix("geoip:") {
        if code.is_empty() {
            return Some(Err(format!("empty country name in rule {s:?}")));
        }
        return Some(Ok(GeoRef { file: "geoip.dat".into(), code: code.to_string(), attrs: Vec::new() }));
    }
    let r = s.strip_prefix("ext:").or_else(|| s.strip_prefix("ext-ip:"))?;
    Some(ext_parts(r).and_then(|(file, code)| {
        if file.is_empty() || code.is_empty() {
            Err(format!("empty filename or empty country in rule {s:?}"))
        } else {
            Ok(GeoRef { file, code, attrs: Vec::new() })
        }
    }))
}

/// `FILE:CODE`, exactly two parts.
fn ext_parts(r: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = r.split(':').collect();
    match parts[..] {
        [f, c] => Ok((f.to_string(), c.to_string())),
        _ => Err(format!("invalid external resource {r:?} (expected ext:FILE:LIST)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's test vectors (ROUTING-DATA.md §1.9), loaded and matched by 4.34.
    pub(crate) const GEOIP_HEX: &str = "0a290a075052495641544512080a040a000000100812140a10fc00000000000000000000000000000010070a0e0a02585812080a04c63364001018";
    pub(crate) const GEOSITE_HEX: &str = "0a420a0454455354120a08031206612e74657374121308021206622e746573741a070a036164731001120412026b7712130801120f5e725b302d395d2b5c2e7465737424";

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn spec_vectors_decode() {
        let ip = unhex(GEOIP_HEX);
        assert_eq!(codes(&ip).unwrap(), ["PRIVATE", "XX"]);
        let private = parse_ip(&ip, "private").unwrap();
        assert!(private.contains("10.9.8.7".parse().unwrap()));
        assert!(private.contains("fd12::1".parse().unwrap()));
        assert!(!private.contains("fe80::1".parse().unwrap()));
        let xx = parse_ip(&ip, "Xx").unwrap();
        assert!(xx.contains("198.51.100.200".parse().unwrap()));
        assert!(!xx.contains("198.51.101.1".parse().unwrap()));

        let site = unhex(GEOSITE_HEX);
        let all = parse_site(&site, "test", &[]).unwrap();
        assert_eq!(
            all.entries,
            [
                DomainMatcher::Full("a.test".into()),
                DomainMatcher::Domain("b.test".into()),
                DomainMatcher::Keyword("kw".into()),
                DomainMatcher::Regexp(r"^r[0-9]+\.test$".into()),
            ]
        );
        let ads = parse_site(&site, "TEST", &["ads".into()]).unwrap();
        assert_eq!(ads.entries, [DomainMatcher::Domain("b.test".into())]);
        assert!(matches!(parse_site(&site, "test", &["zzz".into()]), Err(GeoError::NoAttr { .. })));
        assert!(matches!(parse_site(&site, "nope", &[]), Err(GeoError::NoCode { count: 1, .. })));
    }

    #[test]
    fn the_writer_reproduces_the_spec_vectors() {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "fc00::/7"].iter().map(|s| s.parse().unwrap()).collect();
        let xx: Vec<IpNet> = vec!["198.51.100.0/24".parse().unwrap()];
        assert_eq!(encode_ip_file(&[("PRIVATE", &nets), ("XX", &xx)]), unhex(GEOIP_HEX));
        let site = encode_site_file(&[(
            "TEST",
            &[(3, "a.test", &[]), (2, "b.test", &["ads"]), (0, "kw", &[]), (1, r"^r[0-9]+\.test$", &[])],
        )]);
        assert_eq!(site, unhex(GEOSITE_HEX));
    }

    #[test]
    fn bad_files_and_entries_are_errors() {
        assert!(matches!(codes(&[0xff; 4]), Err(GeoError::Corrupt { .. })));
        // entry{code "A", cidr{ip 5 bytes}}
        let five = [0x0a, 0x0c, 0x0a, 0x01, b'A', 0x12, 0x07, 0x0a, 0x05, 1, 2, 3, 4, 5];
        assert!(parse_ip(&five, "a").unwrap_err().to_string().contains("5 bytes"));
        // entry{code "A", cidr{ip 1.2.3.4, prefix 40}}
        let long = [0x0a, 0x0d, 0x0a, 0x01, b'A', 0x12, 0x08, 0x0a, 0x04, 1, 2, 3, 4, 0x10, 40];
        assert!(parse_ip(&long, "a").unwrap_err().to_string().contains("/40"));
        // entry{code "A", domain{type 7, "x"}}
        let t7 = [0x0a, 0x0b, 0x0a, 0x01, b'A', 0x12, 0x06, 0x08, 0x07, 0x12, 0x02, b'x', b'y'];
        assert!(parse_site(&t7, "a", &[]).unwrap_err().to_string().contains("unsupported domain type 7"));
        // Unknown fields of every wire type are skipped (newer files add some): field 9 varint,
        // field 10 fixed64, field 11 fixed32, inside the entry.
        let mut extra = vec![0x0a, 0x00, 0x0a, 0x01, b'A', 0x48, 0x01];
        extra.extend([0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0x5d, 0, 0, 0, 0]);
        extra[1] = (extra.len() - 2) as u8;
        assert_eq!(parse_ip(&extra, "a").unwrap().cidrs, 0);
    }

    #[test]
    fn references_split_like_4_34() {
        let r = site_ref("geosite:cn@ADS@ @cn").unwrap().unwrap();
        assert_eq!((r.file.as_str(), r.code.as_str(), r.attrs), ("geosite.dat", "cn", vec!["ads".into(), "cn".into()]));
        let r = site_ref("ext:my.dat:tag").unwrap().unwrap();
        assert_eq!((r.file.as_str(), r.code.as_str()), ("my.dat", "tag"));
        assert!(site_ref("ext:my.dat").unwrap().is_err());
        assert!(site_ref("ext:a:b:c").unwrap().is_err());
        assert!(site_ref("geosite:").unwrap().is_err());
        assert!(site_ref("GEOSITE:cn").is_none(), "prefixes are case-sensitive");
        assert!(ip_ref("geoip:").unwrap().is_err());
        assert!(ip_ref("ext-ip::x").unwrap().is_err());
        assert_eq!(ip_ref("geoip:!cn").unwrap().unwrap().code, "!cn", "! is literal in 4.34");
        let a = Assets::in_dir("/d");
        assert_eq!(a.candidates("/abs/x.dat")[0], PathBuf::from("/d/abs/x.dat"));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(list) = codes(&data) {
                for c in list.iter().take(4) {
                    let _ = parse_site(&data, c, &[]);
                    let _ = parse_ip(&data, c);
                }
            }
        }

        #[test]
        fn mutated_vectors_never_panic(flip in 0usize..200, byte in proptest::prelude::any::<u8>(), cut in 0usize..200) {
            for hex in [GEOIP_HEX, GEOSITE_HEX] {
                let mut data = unhex(hex);
                let n = data.len();
                data[flip % n] = byte;
                data.truncate(cut % (n + 1));
                if let Ok(list) = codes(&data) {
                    for c in &list {
                        let _ = parse_site(&data, c, &["ads".to_string()]);
                        let _ = parse_ip(&data, c);
                    }
                }
            }
        }
    }
}
