//! The statechart of a document drawn as SVG: compound and parallel states as boxes
//! nested in their parents, transitions as arrows labelled with their events and
//! conditions. Pure: a [`Document`] in, markup out, the same for the same document, so the
//! page can keep it and only toggle classes as the session moves.
//!
//! Every state is a `<g class="state" data-state="ID">` (the page marks active ones with
//! the class `active`), every transition a `<g class="transition" data-transition="ID[i]">`
//! (the name [`ors_scxml::TransitionRef`] prints, which the session's history uses).

use std::fmt::Write as _;

use ors_scxml::Document;
use ors_scxml::model::{StateId, StateKind};

const PAD: f64 = 14.0;
const HEADER: f64 = 22.0;
/// Between sibling boxes: room for the labels of the arrows that run between them.
const GAP: f64 = 84.0;
/// Between rows of children.
const ROW_GAP: f64 = 56.0;
const LEAF_H: f64 = 34.0;
const HISTORY_D: f64 = 26.0;
/// Children wrap to a new row past this width (a compound with many children stays
/// roughly as wide as it is tall instead of one long row).
const ROW_WIDTH: f64 = 760.0;
/// An approximation of the width of a character of the 12 px sans-serif labels.
const CHAR_W: f64 = 7.0;

/// Where a state is drawn: `(x, y)` is its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Left.
    pub x: f64,
    /// Top.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl Rect {
    fn center(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }

    /// Whether `other` lies inside this one.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.x + other.w <= self.x + self.w
            && other.y + other.h <= self.y + self.h
    }

    /// Whether the two share any area.
    pub fn overlaps(&self, other: &Rect) -> bool {
        self.x < other.x + other.w
            && other.x < self.x + self.w
            && self.y < other.y + other.h
            && other.y < self.y + self.h
    }

    /// Where the ray from the center towards `(px, py)` leaves the rectangle.
    fn border_towards(&self, px: f64, py: f64) -> (f64, f64) {
        let (cx, cy) = self.center();
        let (dx, dy) = (px - cx, py - cy);
        if dx == 0.0 && dy == 0.0 {
            return (cx, self.y);
        }
        let sx = if dx != 0.0 {
            (self.w / 2.0) / dx.abs()
        } else {
            f64::INFINITY
        };
        let sy = if dy != 0.0 {
            (self.h / 2.0) / dy.abs()
        } else {
            f64::INFINITY
        };
        let s = sx.min(sy);
        (cx + dx * s, cy + dy * s)
    }
}

/// The position of every state (index = `StateId`; `<scxml>` is the whole canvas).
pub fn layout(doc: &Document) -> Vec<Rect> {
    let mut sizes = vec![(0.0, 0.0); doc.states.len()];
    let mut offsets = vec![(0.0, 0.0); doc.states.len()];
    measure(doc, 0, &mut sizes, &mut offsets);
    let mut rects = vec![
        Rect {
            x: 0.0,
            y: 0.0,
            w: 0.0,
            h: 0.0
        };
        doc.states.len()
    ];
    place(doc, 0, 0.0, 0.0, &sizes, &offsets, &mut rects);
    rects
}

/// The states drawn inside `s`: its child states, then its history pseudo-states.
fn drawn_children(doc: &Document, s: StateId) -> impl Iterator<Item = StateId> + '_ {
    let st = doc.state(s);
    st.children.iter().chain(st.history.iter()).copied()
}

fn label_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_W
}

/// Sizes every state bottom-up; `offsets[c]` is where child `c` sits in its parent.
fn measure(doc: &Document, s: StateId, sizes: &mut [(f64, f64)], offsets: &mut [(f64, f64)]) {
    let st = doc.state(s);
    if st.is_history() {
        sizes[s as usize] = (HISTORY_D, HISTORY_D);
        return;
    }
    let children: Vec<StateId> = drawn_children(doc, s).collect();
    if children.is_empty() {
        sizes[s as usize] = ((label_width(&st.id) + 28.0).max(70.0), LEAF_H);
        return;
    }
    for &c in &children {
        measure(doc, c, sizes, offsets);
    }
    // Rows of children, left to right, wrapping past ROW_WIDTH; a parallel state keeps its
    // regions in one row, side by side, as they are drawn in every statechart notation.
    let top = if s == 0 { PAD } else { HEADER + PAD };
    let (mut x, mut y, mut row_h, mut width) = (PAD, top, 0.0f64, 0.0f64);
    for &c in &children {
        let (w, h) = sizes[c as usize];
        if x > PAD && x + w > ROW_WIDTH && st.kind != StateKind::Parallel {
            x = PAD;
            y += row_h + ROW_GAP;
            row_h = 0.0;
        }
        offsets[c as usize] = (x, y);
        x += w + GAP;
        row_h = row_h.max(h);
        width = width.max(x - GAP + PAD);
    }
    let width = width.max(label_width(&st.id) + 2.0 * PAD);
    sizes[s as usize] = (width, y + row_h + PAD);
}

fn place(
    doc: &Document,
    s: StateId,
    x: f64,
    y: f64,
    sizes: &[(f64, f64)],
    offsets: &[(f64, f64)],
    rects: &mut [Rect],
) {
    let (w, h) = sizes[s as usize];
    rects[s as usize] = Rect { x, y, w, h };
    for c in drawn_children(doc, s) {
        let (dx, dy) = offsets[c as usize];
        place(doc, c, x + dx, y + dy, sizes, offsets, rects);
    }
}

/// Escapes text for SVG content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The label of a transition: its events, then `[cond]` (long conditions shortened).
fn transition_label(doc: &Document, t: &ors_scxml::model::Transition) -> String {
    let mut label = t
        .events
        .iter()
        .map(|e| e.as_ref())
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(c) = t.cond {
        let src = doc.expr(c).src.as_ref();
        let short: String = if src.chars().count() > 28 {
            src.chars().take(27).chain(std::iter::once('…')).collect()
        } else {
            src.to_string()
        };
        if !label.is_empty() {
            label.push(' ');
        }
        let _ = write!(label, "[{short}]");
    }
    label
}

/// The whole chart as an `<svg>` element.
pub fn svg(doc: &Document) -> String {
    let rects = layout(doc);
    let root = rects[0];
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="-10 -10 {} {}" width="{}" height="{}">"#,
        root.w + 20.0,
        root.h + 20.0,
        root.w + 20.0,
        root.h + 20.0
    );
    out.push_str(concat!(
        r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" "#,
        r#"markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>"#
    ));
    // States first (outermost first, so inner boxes paint over their parents), arrows on top.
    for (i, st) in doc.states.iter().enumerate().skip(1) {
        let r = rects[i];
        let id = esc(&st.id);
        let kind = match st.kind {
            StateKind::Parallel => "parallel",
            StateKind::Final => "final",
            StateKind::ShallowHistory | StateKind::DeepHistory => "history",
            StateKind::Compound => "compound",
            _ => "atomic",
        };
        let _ = write!(
            out,
            r#"<g class="state {kind}" data-state="{id}"><title>{id}</title>"#
        );
        match st.kind {
            StateKind::ShallowHistory | StateKind::DeepHistory => {
                let (cx, cy) = r.center();
                let mark = if st.kind == StateKind::DeepHistory {
                    "H*"
                } else {
                    "H"
                };
                let _ = write!(
                    out,
                    r#"<circle cx="{cx}" cy="{cy}" r="{}"/><text x="{cx}" y="{}" text-anchor="middle">{mark}</text>"#,
                    r.w / 2.0,
                    cy + 4.0
                );
            }
            _ => {
                let rx = if st.kind == StateKind::Final {
                    17.0
                } else {
                    8.0
                };
                let _ = write!(
                    out,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" rx="{rx}"/>"#,
                    r.x, r.y, r.w, r.h
                );
                if st.kind == StateKind::Final {
                    let _ = write!(
                        out,
                        r#"<rect class="inner" x="{}" y="{}" width="{}" height="{}" rx="{}"/>"#,
                        r.x + 3.0,
                        r.y + 3.0,
                        r.w - 6.0,
                        r.h - 6.0,
                        rx - 3.0
                    );
                }
                let leaf = st.children.is_empty() && st.history.is_empty();
                let (tx, ty, anchor) = if leaf {
                    (r.x + r.w / 2.0, r.y + r.h / 2.0 + 4.0, "middle")
                } else {
                    (r.x + 10.0, r.y + 16.0, "start")
                };
                let _ = write!(
                    out,
                    r#"<text x="{tx}" y="{ty}" text-anchor="{anchor}">{id}</text>"#
                );
            }
        }
        out.push_str("</g>");
    }
    for (i, st) in doc.states.iter().enumerate() {
        // The initial transition of a compound state: a dot pointing at its target.
        if st.kind == StateKind::Compound
            && let Some(t) = st.initial
        {
            let r = rects[i];
            let (dx, dy) = (r.x + 8.0, r.y + HEADER + 4.0);
            let _ = write!(
                out,
                r#"<g class="initial"><circle cx="{dx}" cy="{dy}" r="4"/>"#
            );
            if let Some(&target) = doc.transition(t).targets.first() {
                let tr = rects[target as usize];
                let (ex, ey) = tr.border_towards(dx, dy);
                let _ = write!(
                    out,
                    r#"<path d="M{dx},{dy} L{ex},{ey}" marker-end="url(#arrow)"/>"#
                );
            }
            out.push_str("</g>");
        }
        for (n, &t) in st.transitions.iter().enumerate() {
            let tr = doc.transition(t);
            let name = esc(&format!("{}[{n}]", st.id));
            let label = esc(&transition_label(doc, tr));
            let _ = write!(
                out,
                r#"<g class="transition" data-transition="{name}"><title>{name} {label}</title>"#
            );
            let from = rects[i];
            if tr.targets.is_empty() {
                // A targetless transition: a short stub on the state's right edge.
                let (x, y) = (from.x + from.w, from.y + 10.0 + 12.0 * n as f64);
                let _ = write!(
                    out,
                    r#"<path d="M{},{y} L{},{y}" marker-end="url(#arrow)"/><text x="{}" y="{}">{label}</text>"#,
                    x - 10.0,
                    x + 8.0,
                    x + 10.0,
                    y + 4.0
                );
            }
            for &target in &tr.targets {
                arrow(
                    &mut out,
                    from,
                    rects[target as usize],
                    i as StateId == target,
                    &label,
                );
            }
            out.push_str("</g>");
        }
    }
    out.push_str("</svg>");
    out
}

/// An arrow from `from` to `to` with its label at the middle; a curve, so that arrows
/// both ways between two states do not lie on each other.
fn arrow(out: &mut String, from: Rect, to: Rect, same: bool, label: &str) {
    if same {
        // A self-transition: a loop over the top right corner.
        let (x, y) = (from.x + from.w - 14.0, from.y);
        let _ = write!(
            out,
            r#"<path d="M{x},{y} C{},{} {},{} {},{}" marker-end="url(#arrow)"/><text x="{}" y="{}">{label}</text>"#,
            x - 4.0,
            y - 26.0,
            x + 30.0,
            y - 12.0,
            from.x + from.w,
            y + 10.0,
            x + 18.0,
            y - 18.0
        );
        return;
    }
    let (fc, tc) = (from.center(), to.center());
    let (sx, sy, ex, ey) = if from.contains(&to) {
        // Into a descendant: from the parent's top edge down to the child.
        let (ex, ey) = to.border_towards(tc.0, from.y);
        (tc.0, from.y, ex, ey)
    } else if to.contains(&from) {
        // Out to an ancestor: from the child up to the ancestor's top edge.
        let (sx, sy) = from.border_towards(fc.0, to.y);
        (sx, sy, fc.0, to.y)
    } else {
        let (sx, sy) = from.border_towards(tc.0, tc.1);
        let (ex, ey) = to.border_towards(fc.0, fc.1);
        (sx, sy, ex, ey)
    };
    let (mx, my) = ((sx + ex) / 2.0, (sy + ey) / 2.0);
    let (dx, dy) = (ex - sx, ey - sy);
    let len = (dx * dx + dy * dy).sqrt().max(1.0);
    // Bend to the left of the direction of travel: a->b and b->a bend apart.
    let bend = (len * 0.15).min(40.0);
    let (cx, cy) = (mx + dy / len * bend, my - dx / len * bend);
    let _ = write!(
        out,
        r#"<path d="M{sx:.1},{sy:.1} Q{cx:.1},{cy:.1} {ex:.1},{ey:.1}" marker-end="url(#arrow)"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
        (mx + cx) / 2.0,
        (my + cy) / 2.0 - 3.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ors_scxml::{CompileOptions, compile};

    fn doc(src: &str) -> std::sync::Arc<Document> {
        compile(src, &CompileOptions::default()).expect("compiles")
    }

    const NESTED: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" initial="run">
      <state id="run" initial="a">
        <transition event="stop" cond="x &lt; 3 &amp;&amp; y" target="done"/>
        <state id="a"><transition event="tick" target="b"/></state>
        <state id="b"><transition event="tick" target="a"/><transition event="again" target="b"/></state>
        <history id="h" type="deep"><transition target="a"/></history>
      </state>
      <parallel id="p">
        <state id="r1"><state id="r1a"/><state id="r1b"/></state>
        <state id="r2"><state id="r2a"><transition event="go" target="run"/></state></state>
      </parallel>
      <final id="done"/>
    </scxml>"#;

    #[test]
    fn children_lie_inside_their_parents_and_siblings_apart() {
        let d = doc(NESTED);
        let rects = layout(&d);
        for (i, st) in d.states.iter().enumerate() {
            let kids: Vec<StateId> = drawn_children(&d, i as StateId).collect();
            for &c in &kids {
                assert!(
                    rects[i].contains(&rects[c as usize]),
                    "{} not inside {}",
                    d.state(c).id,
                    st.id
                );
            }
            for (n, &a) in kids.iter().enumerate() {
                for &b in &kids[n + 1..] {
                    assert!(
                        !rects[a as usize].overlaps(&rects[b as usize]),
                        "{} overlaps {}",
                        d.state(a).id,
                        d.state(b).id
                    );
                }
            }
        }
    }

    #[test]
    fn parallel_regions_sit_side_by_side() {
        let d = doc(NESTED);
        let rects = layout(&d);
        let r1 = rects[d.state_by_name("r1").unwrap() as usize];
        let r2 = rects[d.state_by_name("r2").unwrap() as usize];
        assert_eq!(r1.y, r2.y);
        assert!(r2.x >= r1.x + r1.w);
    }

    #[test]
    fn many_children_wrap_into_rows() {
        let states: String = (0..30)
            .map(|i| format!(r#"<state id="state_number_{i}"/>"#))
            .collect();
        let d = doc(&format!(
            r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0">{states}</scxml>"#
        ));
        let root = layout(&d)[0];
        assert!(root.w <= ROW_WIDTH + 2.0 * PAD, "width {}", root.w);
        assert!(root.h > 3.0 * LEAF_H, "height {}", root.h);
    }

    #[test]
    fn every_state_and_transition_is_drawn_and_named() {
        let d = doc(NESTED);
        let svg = svg(&d);
        for st in d.states.iter().skip(1) {
            assert!(
                svg.contains(&format!(r#"data-state="{}""#, st.id)),
                "{}",
                st.id
            );
        }
        for name in ["run[0]", "a[0]", "b[0]", "b[1]", "r2a[0]"] {
            assert!(
                svg.contains(&format!(r#"data-transition="{name}""#)),
                "{name}"
            );
        }
        // One arrow head per target, the initial transitions' included.
        let arrows = svg.matches("marker-end").count();
        let initial = d
            .states
            .iter()
            .filter(|s| s.kind == StateKind::Compound && s.initial.is_some())
            .count();
        assert_eq!(arrows, 5 + initial);
        // Conditions are escaped, not markup.
        assert!(svg.contains("[x &lt; 3 &amp;&amp; y]"), "{svg}");
        assert!(roxmltree::Document::parse(&svg).is_ok(), "well-formed");
    }
}
