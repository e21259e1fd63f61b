//! One matcher for the `domain` conditions of all rules: a domain goes in, the ids of the rules whose
//! `domain` list matches it come out. This keeps lookups fast whether there is one rule with 10k domains
//! or 10k rules with one domain each.

use std::collections::HashMap;

use aho_corasick::AhoCorasick;
use regex::{RegexSet, RegexSetBuilder};

use crate::config::DomainMatcher;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Compiled regexps beyond this size are refused instead of eating memory.
const REGEX_SIZE_LIMIT: usize = 256 << 20;

/// Why the domain matcher could not be built.
#[derive(Debug)]
pub(crate) struct BuildError {
    /// Rule index.
    pub(crate) rule: usize,
    /// Index in the rule's `domain` list (None when no single entry is to blame).
    pub(crate) entry: Option<usize>,
    /// What is wrong.
    pub(crate) message: String,
}

/// A range in `DomainIndex::ids`.
#[derive(Debug, Clone, Copy, Default)]
struct IdRange {
    start: u32,
    end: u32,
}

/// What a name in the hash map stands for.
#[derive(Debug, Clone, Copy, Default)]
struct NameEntry {
    /// Rules with `full:name`.
    full: IdRange,
    /// Rules with `domain:name`.
    domain: IdRange,
}

/// Rule ids found for one lookup, kept on the stack unless there are many.
#[derive(Debug)]
pub(crate) struct IdBuf {
    inline: [u32; INLINE],
    len: usize,
    spill: Vec<u32>,
}

const INLINE: usize = 32;

impl IdBuf {
    /// An empty buffer (no allocation).
    pub(crate) fn new() -> Self {
        IdBuf { inline: [0; INLINE], len: 0, spill: Vec::new() }
    }

    #[inline]
    fn push(&mut self, id: u32) {
        if self.len < INLINE {
            self.inline[self.len] = id;
            self.len += 1;
        } else {
            if self.spill.is_empty() {
                self.spill.extend_from_slice(&self.inline);
            }
            self.spill.push(id);
        }
    }

    fn slice_mut(&mut self) -> &mut [u32] {
        if self.spill.is_empty() { &mut self.inline[..self.len] } else { &mut self.spill }
    }

    /// Sorts and deduplicates; returns the ids in ascending order.
    fn finish(&mut self) -> &[u32] {
        let s = self.slice_mut();
        if s.len() > 1 {
            s.sort_unstable();
        }
        let mut n = 0;
        for i in 0..s.len() {
            if n == 0 || s[i] != s[n - 1] {
                s[n] = s[i];
                n += 1;
            }
        }
        if self.spill.is_empty() {
            self.len = n;
            &self.inline[..n]
        } else {
            self.spill.truncate(n);
            &self.spill
        }
    }
}

/// Collects rule ids, dropping those after the first rule that surely matches once reached.
struct Collector<'a> {
    out: &'a mut IdBuf,
    /// Lowest id found so far of a rule whose only condition is `domain`: nothing after it can win.
    limit: u32,
    terminal: &'a [bool],
}

impl Collector<'_> {
    #[inline]
    fn add(&mut self, ids: &[u32]) {
        for &id in ids {
            if id > self.limit {
                return;
            }
            self.out.push(id);
            if self.terminal[id as usize] {
                self.limit = id;
                return;
            }
        }
    }
}

/// The `domain` conditions of all rules, compiled together.
#[derive(Debug, Default)]
pub(crate) struct DomainIndex {
    /// `full:` and `domain:` names.
    names: FastMap<Box<str>, NameEntry>,
    /// Whether any `domain:` entry exists (otherwise one probe of the whole name is enough).
    any_suffix: bool,
    /// Rules with an empty keyword: they match every non-empty domain.
    always: IdRange,
    keywords: Option<AhoCorasick>,
    keyword_ids: Vec<IdRange>,
    regexes: Option<RegexSet>,
    regex_ids: Vec<IdRange>,
    /// All id lists, each ascending, each cut after its first terminal rule.
    ids: Vec<u32>,
    /// Per rule: true if reaching it with a matching domain means it wins.
    terminal: Vec<bool>,
}

/// Accumulates id lists per key, in rule order, before they are flattened.
struct Lists<K> {
    index: FastMap<K, usize>,
    lists: Vec<Vec<u32>>,
    keys: Vec<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Lists<K> {
    fn new() -> Self {
        Lists { index: FastMap::default(), lists: Vec::new(), keys: Vec::new() }
    }

    fn add(&mut self, key: &K, rule: u32) {
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                let i = self.lists.len();
                self.index.insert(key.clone(), i);
                self.lists.push(Vec::new());
                self.keys.push(key.clone());
                i
            }
        };
        let list = &mut self.lists[i];
        // Rules are added in order, so a repeat can only be the last element.
        if list.last() != Some(&rule) {
            list.push(rule);
        }
    }
}

/// Appends `list` to `ids`, cut after the first terminal rule, and returns its range.
fn flatten(ids: &mut Vec<u32>, list: &[u32], terminal: &[bool]) -> IdRange {
    let start = ids.len() as u32;
    for &id in list {
        ids.push(id);
        if terminal[id as usize] {
            break;
        }
    }
    IdRange { start, end: ids.len() as u32 }
}

impl DomainIndex {
    /// Compiles `rules[i]` = the `domain` list of rule i; `terminal[i]` says rule i has no other condition.
    pub(crate) fn new(rules: &[&[DomainMatcher]], terminal: Vec<bool>) -> Result<Self, BuildError> {
        let mut full: Lists<Box<str>> = Lists::new();
        let mut suffix: Lists<Box<str>> = Lists::new();
        let mut keyword: Lists<Box<str>> = Lists::new();
        let mut regex: Lists<Box<str>> = Lists::new();
        // For error reports: where each regexp first appeared.
        let mut regex_origin: Vec<(usize, usize)> = Vec::new();
        let mut always: Vec<u32> = Vec::new();

        for (rule, list) in rules.iter().enumerate() {
            let id =
                u32::try_from(rule).map_err(|_| BuildError { rule, entry: None, message: "too many rules".into() })?;
            // A geosite list's entries count as the rule's own (its index names the list entry).
            let flat = list.iter().enumerate().flat_map(|(entry, m)| match m {
                DomainMatcher::Geo(g) => g.entries.iter().map(|e| (entry, e)).collect::<Vec<_>>(),
                m => vec![(entry, m)],
            });
            for (entry, m) in flat {
                match m {
                    DomainMatcher::Geo(_) => {}
                    DomainMatcher::Full(s) => full.add(&Box::from(s.as_str()), id),
                    DomainMatcher::Domain(s) => suffix.add(&Box::from(s.as_str()), id),
                    DomainMatcher::Keyword(s) if s.is_empty() => {
                        if always.last() != Some(&id) {
                            always.push(id);
                        }
                    }
                    DomainMatcher::Keyword(s) => keyword.add(&Box::from(s.as_str()), id),
                    DomainMatcher::Regexp(s) => {
                        let before = regex.lists.len();
                        regex.add(&Box::from(s.as_str()), id);
                        if regex.lists.len() > before {
                            regex_origin.push((rule, entry));
                        }
                    }
                }
            }
        }

        let mut ids = Vec::new();
        let mut names: FastMap<Box<str>, NameEntry> = FastMap::default();
        for (key, list) in full.keys.into_iter().zip(&full.lists) {
            names.entry(key).or_default().full = flatten(&mut ids, list, &terminal);
        }
        let any_suffix = !suffix.keys.is_empty();
        for (key, list) in suffix.keys.into_iter().zip(&suffix.lists) {
            names.entry(key).or_default().domain = flatten(&mut ids, list, &terminal);
        }
        let always = flatten(&mut ids, &always, &terminal);

        let keyword_ids = keyword.lists.iter().map(|l| flatten(&mut ids, l, &terminal)).collect();
        let keywords = if keyword.keys.is_empty() {
            None
        } else {
            // Default (standard) match kind: the only one that reports overlapping matches.
            let ac = AhoCorasick::new(keyword.keys.iter().map(|k| k.as_bytes())).map_err(|e| BuildError {
                rule: 0,
                entry: None,
                message: format!("keywords: {e}"),
            })?;
            Some(ac)
        };

        let regex_ids = regex.lists.iter().map(|l| flatten(&mut ids, l, &terminal)).collect();
        let regexes = if regex.keys.is_empty() {
            None
        } else {
            let set = RegexSetBuilder::new(regex.keys.iter().map(|k| &**k)).size_limit(REGEX_SIZE_LIMIT).build();
            match set {
                Ok(set) => Some(set),
                Err(set_err) => {
                    // The set's error does not say which pattern is bad: find it.
                    for (key, &(rule, entry)) in regex.keys.iter().zip(&regex_origin) {
                        if let Err(e) = regex::RegexBuilder::new(key).size_limit(REGEX_SIZE_LIMIT).build() {
                            return Err(BuildError { rule, entry: Some(entry), message: format!("bad regexp: {e}") });
                        }
                    }
                    let (rule, _) = regex_origin.first().copied().unwrap_or_default();
                    return Err(BuildError { rule, entry: None, message: format!("regexps: {set_err}") });
                }
            }
        };

        names.shrink_to_fit();
        ids.shrink_to_fit();
        Ok(DomainIndex { names, any_suffix, always, keywords, keyword_ids, regexes, regex_ids, ids, terminal })
    }

    #[inline]
    fn range(&self, r: IdRange) -> &[u32] {
        &self.ids[r.start as usize..r.end as usize]
    }

    /// Ids (ascending, no repeats) of the rules whose `domain` condition matches `domain`. Rules after
    /// a matching rule that has no other condition may be left out: they can never win.
    pub(crate) fn lookup<'b>(&self, domain: &str, out: &'b mut IdBuf) -> &'b [u32] {
        // V2Ray: an empty target domain matches no domain condition.
        if domain.is_empty() {
            return out.finish();
        }
        let mut c = Collector { out: &mut *out, limit: u32::MAX, terminal: &self.terminal };
        c.add(self.range(self.always));
        if !self.names.is_empty() {
            if let Some(e) = self.names.get(domain) {
                c.add(self.range(e.full));
                c.add(self.range(e.domain));
            }
            if self.any_suffix {
                // `domain:x` matches when x is a suffix starting right after a dot (the Go rule
                // `s[len(s)-len(x)-1] == '.'`), so probe every such suffix.
                for (i, b) in domain.bytes().enumerate() {
                    if b == b'.'
                        && let Some(e) = self.names.get(&domain[i + 1..])
                    {
                        c.add(self.range(e.domain));
                    }
                }
            }
        }
        if let Some(ac) = &self.keywords {
            for m in ac.find_overlapping_iter(domain) {
                c.add(self.range(self.keyword_ids[m.pattern().as_usize()]));
            }
        }
        if let Some(set) = &self.regexes
            && set.is_match(domain)
        {
            // Only allocates when some regexp matched.
            for i in set.matches(domain).iter() {
                c.add(self.range(self.regex_ids[i]));
            }
        }
        out.finish()
    }
}
