//! The memory planner: liveness over a schedule, buffer assignment into one arena, peak bytes.
//!
//! Time runs `0 ..= n + 1` for `n` steps: time 0 is before the first step (parameters, optimizer
//! state and inputs are already there), step `i` writes at time `i + 1`, and time `n + 1` is the
//! end of the step (outputs read, state updates committed). A buffer lives from the time it is
//! written to the last time it is read, inclusive.
//!
//! Buffers that may share bytes are merged into classes before placement:
//! - views (a reshape) always share their source's bytes;
//! - a state update (`p ← p'`) is placed in `p`'s home slot when every read of `p` happens no later
//!   than `p'` is written (and, if at the same step, that step may write `p'` over `p` in place), so
//!   the runtime commits the update without a copy; otherwise `p'` lives to the end in its own slot
//!   and `ArenaPlan::updates` says to copy;
//! - an in-place write takes a dying read's class when the step allows it (elementwise, same size)
//!   and that class holds no persistent buffer.
//!
//! Classes are placed greedily by size, largest first, each at the lowest offset that overlaps no
//! already-placed class alive at the same time (the "greedy by size" offline allocator); offsets and
//! sizes are rounded up to `alignment`. The arena size is the highest end; `live_peak` (the most bytes
//! alive at one time) is a lower bound on any placement, so `total - live_peak` is fragmentation.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::schedule::{BufKey, Schedule};

/// Where one buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub offset: u64,
    /// The buffer's own bytes (unaligned).
    pub size: u64,
}

/// How a state update is committed at the end of the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatePlacement {
    pub target: String,
    pub value: BufKey,
    pub home: BufKey,
    /// The new value is written straight into the home slot; otherwise copy `value` → `home`.
    pub in_place: bool,
}

/// The arena the runtime allocates once: every buffer's offset and size, and the total.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    pub alignment: u64,
    /// Bytes to allocate.
    pub total: u64,
    pub slots: BTreeMap<BufKey, Slot>,
    pub updates: Vec<UpdatePlacement>,
}

impl ArenaPlan {
    pub fn slot(&self, v: crate::ir::ValueId) -> Option<Slot> {
        self.slots.get(&BufKey::Value(v)).copied()
    }
}

/// What the memory planner needs besides the schedule.
#[derive(Clone, Debug, Default)]
pub struct MemoryInput {
    /// Bytes of every buffer the schedule reads or writes (and of every preloaded one).
    pub sizes: HashMap<BufKey, u64>,
    /// Present before the first step: parameters, optimizer state, inputs.
    pub preloaded: Vec<BufKey>,
    /// `(target name, home buffer, new value)` for each state update.
    pub updates: Vec<(String, BufKey, BufKey)>,
    /// Read after the last step (the step's outputs).
    pub outputs: Vec<BufKey>,
    /// Offsets and sizes are multiples of this (at least 1).
    pub alignment: u64,
}

/// Lifetime of a buffer or class, in the time units of the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub first: usize,
    pub last: usize,
}

impl Lifetime {
    pub fn overlaps(&self, o: &Lifetime) -> bool {
        self.first <= o.last && o.first <= self.last
    }
}

/// Buffers sharing one slot.
#[derive(Clone, Debug)]
pub struct Class {
    pub members: Vec<BufKey>,
    /// Bytes reserved (the largest member, aligned).
    pub size: u64,
    pub life: Lifetime,
    /// Holds a preloaded buffer, an update home or an output.
    pub persistent: bool,
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub arena: ArenaPlan,
    pub classes: Vec<Class>,
    pub class_of: HashMap<BufKey, usize>,
    /// Each buffer's own lifetime (before merging).
    pub lifetimes: HashMap<BufKey, Lifetime>,
    /// The most (aligned) bytes alive at one time, and the first time it happens.
    pub live_peak: u64,
    pub peak_time: usize,
    /// Number of steps (so the end of the step is `steps + 1`).
    pub steps: usize,
}

struct Dsu {
    parent: Vec<usize>,
}

impl Dsu {
    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }
}

fn align(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Plans the arena for `schedule` (see the module doc). Buffers without a size count as 0 bytes.
pub fn plan_memory(schedule: &Schedule, input: &MemoryInput) -> MemoryPlan {
    let n = schedule.steps.len();
    let end = n + 1;
    let a = input.alignment.max(1);
    // Every buffer, numbered in a deterministic order.
    let mut keys: Vec<BufKey> = Vec::new();
    let mut index: HashMap<BufKey, usize> = HashMap::new();
    let mut add = |k: BufKey, keys: &mut Vec<BufKey>| {
        if let std::collections::hash_map::Entry::Vacant(e) = index.entry(k) {
            e.insert(keys.len());
            keys.push(k);
        }
    };
    for k in &input.preloaded {
        add(*k, &mut keys);
    }
    for s in &schedule.steps {
        for k in s.reads.iter().chain(&s.writes) {
            add(*k, &mut keys);
        }
    }
    for (_, h, v) in &input.updates {
        add(*h, &mut keys);
        add(*v, &mut keys);
    }
    for k in &input.outputs {
        add(*k, &mut keys);
    }
    let size = |k: &BufKey| input.sizes.get(k).copied().unwrap_or(0);
    // Own lifetimes.
    let preloaded: HashSet<BufKey> = input.preloaded.iter().copied().collect();
    let mut life: HashMap<BufKey, Lifetime> = HashMap::new();
    for k in &keys {
        let first = if preloaded.contains(k) { 0 } else { usize::MAX };
        life.insert(*k, Lifetime { first, last: 0 });
    }
    for (i, s) in schedule.steps.iter().enumerate() {
        let t = i + 1;
        for k in &s.writes {
            let l = life.get_mut(k).expect("every key is known");
            l.first = l.first.min(t);
            l.last = l.last.max(t);
        }
        for k in &s.reads {
            let l = life.get_mut(k).expect("every key is known");
            l.last = l.last.max(t);
        }
    }
    for k in &input.outputs {
        if let Some(l) = life.get_mut(k) {
            l.last = end;
        }
    }
    for (_, _, v) in &input.updates {
        if let Some(l) = life.get_mut(v) {
            l.last = end;
        }
    }
    for l in life.values_mut() {
        if l.first == usize::MAX {
            // Read but never written nor preloaded: treat as present from the start.
            l.first = 0;
        }
        l.last = l.last.max(l.first);
    }
    let writer: HashMap<BufKey, usize> = schedule.writers();
    // A program buffer may be written by several steps (slices of it); what may share bytes
    // with it depends on its first write.
    let first_writer: HashMap<BufKey, usize> = schedule.first_writers();

    let mut dsu = Dsu {
        parent: (0..keys.len()).collect(),
    };
    let mut class_life: Vec<Lifetime> = keys.iter().map(|k| life[k]).collect();
    let mut class_persistent: Vec<bool> = keys
        .iter()
        .map(|k| preloaded.contains(k) || input.outputs.contains(k))
        .collect();
    let union =
        |dsu: &mut Dsu, cl: &mut Vec<Lifetime>, cp: &mut Vec<bool>, x: usize, y: usize| -> usize {
            let (rx, ry) = (dsu.find(x), dsu.find(y));
            if rx == ry {
                return rx;
            }
            dsu.parent[ry] = rx;
            cl[rx] = Lifetime {
                first: cl[rx].first.min(cl[ry].first),
                last: cl[rx].last.max(cl[ry].last),
            };
            cp[rx] = cp[rx] || cp[ry];
            rx
        };
    // Views share their source's bytes.
    let mut has_view = vec![false; keys.len()];
    for s in &schedule.steps {
        for (w, r) in &s.views {
            let (x, y) = (index[r], index[w]);
            has_view[x] = true;
            has_view[y] = true;
            union(&mut dsu, &mut class_life, &mut class_persistent, x, y);
        }
    }
    // State updates: into the home slot when legal.
    let mut updates = Vec::new();
    for (target, h, v) in &input.updates {
        let (hi, vi) = (index[h], index[v]);
        let rh = dsu.find(hi);
        let rv = dsu.find(vi);
        let legal = match (first_writer.get(v), writer.get(v)) {
            (Some(&ws), Some(&ws_last)) if rh != rv && !has_view[vi] && size(v) == size(h) => {
                let tv = ws + 1;
                let last_h = class_life[rh].last;
                let step = &schedule.steps[ws];
                let reads_home_class = step.reads.iter().any(|r| dsu.find(index[r]) == rh);
                last_h < tv
                    || (last_h == tv
                        && ws == ws_last
                        && reads_home_class
                        && step
                            .in_place
                            .iter()
                            .any(|(w, r)| w == v && dsu.find(index[r]) == rh))
            }
            _ => false,
        };
        if legal {
            let r = union(&mut dsu, &mut class_life, &mut class_persistent, hi, vi);
            class_life[r].first = 0;
            class_life[r].last = end;
            class_persistent[r] = true;
        } else {
            let r = dsu.find(hi);
            class_life[r].first = 0;
            class_life[r].last = end;
            class_persistent[r] = true;
            life.get_mut(h).expect("home is known").last = end;
        }
        updates.push(UpdatePlacement {
            target: target.clone(),
            value: *v,
            home: *h,
            in_place: legal,
        });
    }
    let mut is_update_value = vec![false; keys.len()];
    for (_, _, v) in &input.updates {
        is_update_value[index[v]] = true;
    }
    // In place: a write takes a dying, non-persistent read's class of the same size.
    for (i, s) in schedule.steps.iter().enumerate() {
        let t = i + 1;
        let mut taken: Vec<usize> = Vec::new();
        let mut placed: Vec<BufKey> = Vec::new();
        for (w, r) in &s.in_place {
            let (wi, ri) = (index[w], index[r]);
            let (rw, rr) = (dsu.find(wi), dsu.find(ri));
            // One dying read per write, one write per dying read.
            if placed.contains(w)
                || rw == rr
                || taken.contains(&rr)
                || class_persistent[rr]
                || class_persistent[rw]
            {
                continue;
            }
            // The write must still be alone (not a view or an update value already).
            if has_view[wi] || is_update_value[wi] {
                continue;
            }
            // The read dies here and the write starts here (not a later slice of a buffer that
            // is already alive).
            if class_life[rr].last != t || life[w].first != t || size(w) != size(r) {
                continue;
            }
            let root = union(&mut dsu, &mut class_life, &mut class_persistent, ri, wi);
            taken.push(root);
            placed.push(*w);
        }
    }
    // Materialise classes.
    let mut class_index: HashMap<usize, usize> = HashMap::new();
    let mut classes: Vec<Class> = Vec::new();
    let mut class_of: HashMap<BufKey, usize> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let root = dsu.find(i);
        let c = *class_index.entry(root).or_insert_with(|| {
            classes.push(Class {
                members: Vec::new(),
                size: 0,
                life: class_life[root],
                persistent: class_persistent[root],
            });
            classes.len() - 1
        });
        classes[c].members.push(*k);
        classes[c].size = classes[c].size.max(align(size(k), a));
        class_of.insert(*k, c);
    }
    // Greedy by size.
    let mut by_size: Vec<usize> = (0..classes.len()).collect();
    by_size.sort_by(|x, y| {
        classes[*y]
            .size
            .cmp(&classes[*x].size)
            .then(classes[*x].life.first.cmp(&classes[*y].life.first))
            .then(x.cmp(y))
    });
    let mut offset = vec![0u64; classes.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0u64;
    for c in by_size {
        let sz = classes[c].size;
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .filter(|p| classes[**p].life.overlaps(&classes[c].life) && classes[**p].size > 0)
            .map(|p| (offset[*p], offset[*p] + classes[*p].size))
            .collect();
        busy.sort();
        let mut at = 0u64;
        for (s, e) in busy {
            if s >= at + sz {
                break;
            }
            at = at.max(e);
        }
        offset[c] = at;
        total = total.max(at + sz);
        placed.push(c);
    }
    let mut slots = BTreeMap::new();
    for k in &keys {
        let c = class_of[k];
        slots.insert(
            *k,
            Slot {
                offset: offset[c],
                size: size(k),
            },
        );
    }
    // Live bytes over time (a sweep over class starts and ends).
    let mut delta = vec![0i128; end + 2];
    for c in &classes {
        delta[c.life.first] += c.size as i128;
        delta[c.life.last + 1] -= c.size as i128;
    }
    let (mut cur, mut live_peak, mut peak_time) = (0i128, 0u64, 0usize);
    for (t, d) in delta.iter().enumerate().take(end + 1) {
        cur += d;
        if cur as u64 > live_peak {
            live_peak = cur as u64;
            peak_time = t;
        }
    }
    MemoryPlan {
        arena: ArenaPlan {
            alignment: a,
            total,
            slots,
            updates,
        },
        classes,
        class_of,
        lifetimes: life,
        live_peak,
        peak_time,
        steps: n,
    }
}

impl MemoryPlan {
    /// Classes alive at time `t`.
    pub fn live_at(&self, t: usize) -> impl Iterator<Item = &Class> {
        self.classes
            .iter()
            .filter(move |c| c.life.first <= t && t <= c.life.last && c.size > 0)
    }

    /// Bytes alive at every time `0 ..= steps + 1` by category (a class counts under the first
    /// category of its members, in `Category` order).
    pub fn breakdown_curve<F: Fn(BufKey) -> Category>(&self, category: F) -> Vec<CategoryBytes> {
        let end = self.steps + 1;
        let mut delta: Vec<[i128; 5]> = vec![[0; 5]; end + 2];
        for c in self.classes.iter().filter(|c| c.size > 0) {
            let cat = c
                .members
                .iter()
                .map(|m| category(*m))
                .min()
                .unwrap_or(Category::Workspace) as usize;
            delta[c.life.first][cat] += c.size as i128;
            delta[c.life.last + 1][cat] -= c.size as i128;
        }
        let mut cur = [0i128; 5];
        let mut out = Vec::with_capacity(end + 1);
        for d in delta.iter().take(end + 1) {
            for (x, y) in cur.iter_mut().zip(d) {
                *x += y;
            }
            out.push(CategoryBytes {
                params: cur[Category::Params as usize] as u64,
                optimizer: cur[Category::Optimizer as usize] as u64,
                grads: cur[Category::Grads as usize] as u64,
                activations: cur[Category::Activations as usize] as u64,
                workspace: cur[Category::Workspace as usize] as u64,
            });
        }
        out
    }

    /// Bytes alive at time `t` by category (a class counts under its first member's category).
    pub fn breakdown_at<F: Fn(BufKey) -> Category>(&self, t: usize, category: F) -> CategoryBytes {
        let mut out = CategoryBytes::default();
        for c in self.live_at(t) {
            let cat = c
                .members
                .iter()
                .map(|m| category(*m))
                .min()
                .unwrap_or(Category::Workspace);
            out.add(cat, c.size);
        }
        out
    }
}

/// What a byte of memory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Params,
    Optimizer,
    Grads,
    /// Forward values kept for backward.
    Activations,
    /// Everything else: transient values, inputs, new state before it is committed.
    Workspace,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Params => "params",
            Category::Optimizer => "optimizer",
            Category::Grads => "grads",
            Category::Activations => "activations",
            Category::Workspace => "workspace",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CategoryBytes {
    pub params: u64,
    pub grads: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub workspace: u64,
}

impl CategoryBytes {
    pub fn add(&mut self, c: Category, bytes: u64) {
        match c {
            Category::Params => self.params += bytes,
            Category::Grads => self.grads += bytes,
            Category::Optimizer => self.optimizer += bytes,
            Category::Activations => self.activations += bytes,
            Category::Workspace => self.workspace += bytes,
        }
    }
    pub fn total(&self) -> u64 {
        self.params + self.grads + self.optimizer + self.activations + self.workspace
    }
}

/// Checks an arena plan against the schedule it was made for, independently of how it was made:
/// every buffer has a slot inside the arena; no two buffers alive at the same time share a byte
/// unless one is a view of the other or the step where one dies declares the other's write in
/// place; and, simulating the step, no value is read after another write clobbered its bytes, and
/// every in-place update is intact at the end. Returns the violations (empty = valid).
pub fn validate(schedule: &Schedule, input: &MemoryInput, arena: &ArenaPlan) -> Vec<String> {
    let mut errs = Vec::new();
    let n = schedule.steps.len();
    let end = n + 1;
    let size = |k: &BufKey| input.sizes.get(k).copied().unwrap_or(0);
    let mut all: Vec<BufKey> = input.preloaded.clone();
    for s in &schedule.steps {
        all.extend(s.reads.iter().chain(&s.writes).copied());
    }
    all.extend(input.outputs.iter().copied());
    for (_, h, v) in &input.updates {
        all.push(*h);
        all.push(*v);
    }
    all.sort();
    all.dedup();
    for k in &all {
        match arena.slots.get(k) {
            None => errs.push(format!("{k} has no slot")),
            Some(s) if s.size < size(k) => errs.push(format!(
                "{k}: slot of {} bytes for {} bytes",
                s.size,
                size(k)
            )),
            Some(s) if s.offset + size(k) > arena.total => {
                errs.push(format!("{k}: slot ends past the arena"))
            }
            Some(s) if s.offset % arena.alignment.max(1) != 0 => {
                errs.push(format!("{k}: offset {} not aligned", s.offset))
            }
            Some(_) => {}
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    // Views relate buffers that are the same bytes by construction.
    let mut view_group: HashMap<BufKey, BufKey> = all.iter().map(|k| (*k, *k)).collect();
    fn root(g: &HashMap<BufKey, BufKey>, mut k: BufKey) -> BufKey {
        while g[&k] != k {
            k = g[&k];
        }
        k
    }
    for s in &schedule.steps {
        for (w, r) in &s.views {
            let (a, b) = (root(&view_group, *w), root(&view_group, *r));
            if a != b {
                view_group.insert(a, b);
            }
        }
    }
    let group: HashMap<BufKey, BufKey> = all.iter().map(|k| (*k, root(&view_group, *k))).collect();
    // Own lifetimes, recomputed here.
    let mut first: HashMap<BufKey, usize> = all
        .iter()
        .map(|k| {
            (
                *k,
                if input.preloaded.contains(k) {
                    0
                } else {
                    usize::MAX
                },
            )
        })
        .collect();
    let mut last: HashMap<BufKey, usize> = all.iter().map(|k| (*k, 0)).collect();
    for (i, s) in schedule.steps.iter().enumerate() {
        for k in &s.writes {
            let f = first.get_mut(k).expect("known");
            *f = (*f).min(i + 1);
        }
        for k in s.reads.iter().chain(&s.writes) {
            let l = last.get_mut(k).expect("known");
            *l = (*l).max(i + 1);
        }
    }
    for k in &input.outputs {
        last.insert(*k, end);
    }
    for u in &arena.updates {
        last.insert(u.value, end);
        if !u.in_place {
            last.insert(u.home, end);
        }
    }
    for k in &all {
        if first[k] == usize::MAX {
            first.insert(*k, 0);
        }
    }
    // Pairs of buffers whose bytes overlap, from a sweep over offsets.
    let mut by_offset: Vec<(u64, u64, BufKey)> = all
        .iter()
        .filter(|k| size(k) > 0)
        .map(|k| (arena.slots[k].offset, arena.slots[k].offset + size(k), *k))
        .collect();
    by_offset.sort();
    let mut overlaps: HashMap<BufKey, Vec<BufKey>> = HashMap::new();
    for (i, (_, end_i, a)) in by_offset.iter().enumerate() {
        for (off_j, _, b) in &by_offset[i + 1..] {
            if off_j >= end_i {
                break;
            }
            overlaps.entry(*a).or_default().push(*b);
            overlaps.entry(*b).or_default().push(*a);
        }
    }
    let declared_in_place = |t: usize, w: &BufKey, r: &BufKey| {
        t >= 1
            && t <= n
            && schedule.steps[t - 1]
                .in_place
                .iter()
                .any(|(x, y)| x == w && y == r)
    };
    for (a, others) in &overlaps {
        for b in others {
            if a >= b || group[a] == group[b] {
                continue;
            }
            let (fa, la, fb, lb) = (first[a], last[a], first[b], last[b]);
            if fa > lb || fb > la {
                continue;
            }
            // Touching at one step where the dying one is overwritten in place by the new one.
            let ok = (la == fb && declared_in_place(fb, b, a))
                || (lb == fa && declared_in_place(fa, a, b));
            if !ok {
                errs.push(format!(
                    "{a} (live {fa}..={la}) and {b} (live {fb}..={lb}) share bytes"
                ));
            }
        }
    }
    errs.sort();
    // Simulation: which buffers hold their value.
    let mut valid: HashSet<BufKey> = input.preloaded.iter().copied().collect();
    for (i, s) in schedule.steps.iter().enumerate() {
        for r in &s.reads {
            if !valid.contains(r) {
                errs.push(format!(
                    "step {i} reads {r}, whose bytes were overwritten or never written"
                ));
            }
        }
        for w in &s.writes {
            if let Some(others) = overlaps.get(w) {
                for k in others {
                    if group[k] != group[w] {
                        valid.remove(k);
                    }
                }
            }
            valid.insert(*w);
            // Views of a valid buffer are valid too (same bytes).
            for (vw, vr) in &s.views {
                if vw == w && valid.contains(vr) {
                    valid.insert(*vw);
                }
            }
        }
    }
    for k in &input.outputs {
        if !valid.contains(k) {
            errs.push(format!("output {k} was overwritten before the end"));
        }
    }
    for u in &arena.updates {
        if !valid.contains(&u.value) {
            errs.push(format!(
                "update {} <- {} was overwritten before the end",
                u.target, u.value
            ));
        }
        let (sh, sv) = (arena.slots[&u.home], arena.slots[&u.value]);
        if u.in_place && sh.offset != sv.offset {
            errs.push(format!(
                "update {} marked in place but not at its home",
                u.target
            ));
        }
    }
    errs
}
