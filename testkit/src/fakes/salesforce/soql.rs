//! The SOQL subset the fake understands: `SELECT f1, f2 FROM Obj [WHERE cond] [ORDER BY f [ASC|DESC]
//! [NULLS FIRST|LAST], ...] [LIMIT n]`. Conditions are comparisons (`=`, `!=`, `<`, `<=`, `>`, `>=`,
//! `LIKE`), `IN (...)` / `NOT IN (...)`, `NOT`, parentheses, and `AND` / `OR` groups. Like real SOQL,
//! `AND` and `OR` cannot be mixed in one group without parentheses. Literals: `'strings'` (with `\`
//! escapes), numbers, `true`/`false`, `null`, dates (`2026-12-03`) and datetimes (`2026-12-03T07:00:00Z`,
//! fractional seconds and `±hh:mm` offsets allowed). Field names are returned as written; the caller
//! resolves them against the object (SOQL names are case-insensitive).

use std::cmp::Ordering;

use serde_json::Value;

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    pub fields: Vec<String>,
    pub object: String,
    pub filter: Option<Expr>,
    pub order: Vec<Order>,
    pub limit: Option<usize>,
}

/// One `ORDER BY` key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Order {
    pub field: String,
    pub desc: bool,
    pub nulls_last: bool,
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Cmp {
        field: String,
        op: Op,
        value: Lit,
    },
    In {
        field: String,
        values: Vec<Lit>,
        negated: bool,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
}

/// A literal on the right-hand side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
    /// Milliseconds since the Unix epoch.
    DateTime(i64),
    /// `YYYY-MM-DD`.
    Date(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Comma,
    LParen,
    RParen,
    Op(Op),
}

fn tokenize(q: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            '=' => {
                out.push(Tok::Op(Op::Eq));
                i += 1;
            }
            '!' | '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('!', Some('=')) => (Op::Ne, 2),
                    ('<', Some('>')) => (Op::Ne, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', _) => (Op::Gt, 1),
                    _ => return Err(format!("unexpected token: '{c}'")),
                };
                out.push(Tok::Op(op));
                i += len;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\\') => {
                            let esc = chars.get(i + 1).ok_or("unterminated string literal")?;
                            s.push(match esc {
                                'n' => '\n',
                                't' => '\t',
                                other => *other,
                            });
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(other) => {
                            s.push(*other);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+' | ':') => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric()
                        || matches!(chars[i], '_' | '.' | '-' | '+' | ':'))
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected token: '{other}'")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        let hit = self.peek_keyword(kw);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), String> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(format!(
                "expecting '{kw}', found '{}'",
                self.describe_next()
            ))
        }
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            None => "<EOF>".into(),
            Some(Tok::Word(w)) => w.clone(),
            Some(Tok::Str(s)) => format!("'{s}'"),
            Some(Tok::Comma) => ",".into(),
            Some(Tok::LParen) => "(".into(),
            Some(Tok::RParen) => ")".into(),
            Some(Tok::Op(_)) => "operator".into(),
        }
    }

    fn identifier(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w))
                if w.chars().next().is_some_and(|c| c.is_alphabetic())
                    && w.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
                    && !is_reserved(&w) =>
            {
                Ok(w)
            }
            _ => {
                self.pos -= 1;
                Err(format!("unexpected token: '{}'", self.describe_next()))
            }
        }
    }

    fn query(&mut self) -> Result<Query, String> {
        self.expect_keyword("SELECT")?;
        let mut fields = vec![self.identifier()?];
        while self.peek() == Some(&Tok::Comma) {
            self.pos += 1;
            fields.push(self.identifier()?);
        }
        self.expect_keyword("FROM")?;
        let object = self.identifier()?;
        let filter = if self.eat_keyword("WHERE") {
            Some(self.condition()?)
        } else {
            None
        };
        let mut order = Vec::new();
        if self.eat_keyword("ORDER") {
            self.expect_keyword("BY")?;
            loop {
                let field = self.identifier()?;
                let desc = if self.eat_keyword("DESC") {
                    true
                } else {
                    self.eat_keyword("ASC");
                    false
                };
                let mut nulls_last = desc;
                if self.eat_keyword("NULLS") {
                    if self.eat_keyword("LAST") {
                        nulls_last = true;
                    } else {
                        self.expect_keyword("FIRST")?;
                        nulls_last = false;
                    }
                }
                order.push(Order {
                    field,
                    desc,
                    nulls_last,
                });
                if self.peek() == Some(&Tok::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        let limit = if self.eat_keyword("LIMIT") {
            match self.next() {
                Some(Tok::Word(w)) => Some(
                    w.parse::<usize>()
                        .map_err(|_| format!("unexpected token: '{w}'"))?,
                ),
                _ => return Err("expecting a number after LIMIT".into()),
            }
        } else {
            None
        };
        if self.peek().is_some() {
            return Err(format!("unexpected token: '{}'", self.describe_next()));
        }
        Ok(Query {
            fields,
            object,
            filter,
            order,
            limit,
        })
    }

    /// `term ((AND|OR) term)*` with a single connector per group.
    fn condition(&mut self) -> Result<Expr, String> {
        let first = self.term()?;
        let mut terms = vec![first];
        let mut connector: Option<&'static str> = None;
        loop {
            let kw = if self.peek_keyword("AND") {
                "AND"
            } else if self.peek_keyword("OR") {
                "OR"
            } else {
                break;
            };
            if connector.is_some_and(|c| c != kw) {
                return Err(format!(
                    "unexpected token: '{kw}' (use parentheses to mix AND and OR)"
                ));
            }
            connector = Some(kw);
            self.pos += 1;
            terms.push(self.term()?);
        }
        Ok(match connector {
            None => terms.remove(0),
            Some("AND") => Expr::And(terms),
            Some(_) => Expr::Or(terms),
        })
    }

    fn term(&mut self) -> Result<Expr, String> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.term()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let inner = self.condition()?;
            if self.next() != Some(Tok::RParen) {
                self.pos -= 1;
                return Err(format!("expecting ')', found '{}'", self.describe_next()));
            }
            return Ok(inner);
        }
        let field = self.identifier()?;
        let negated_in = self.peek_keyword("NOT");
        if negated_in {
            self.pos += 1;
        }
        if self.eat_keyword("IN") {
            if self.next() != Some(Tok::LParen) {
                return Err("expecting '(' after IN".into());
            }
            let mut values = vec![self.literal()?];
            while self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                values.push(self.literal()?);
            }
            if self.next() != Some(Tok::RParen) {
                return Err("expecting ')' after the IN list".into());
            }
            return Ok(Expr::In {
                field,
                values,
                negated: negated_in,
            });
        }
        if negated_in {
            return Err("expecting 'IN' after NOT".into());
        }
        let op = match self.next() {
            Some(Tok::Op(op)) => op,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("LIKE") => Op::Like,
            _ => {
                self.pos -= 1;
                return Err(format!("unexpected token: '{}'", self.describe_next()));
            }
        };
        let value = self.literal()?;
        if op == Op::Like && !matches!(value, Lit::Str(_)) {
            return Err("LIKE needs a string literal".into());
        }
        Ok(Expr::Cmp { field, op, value })
    }

    fn literal(&mut self) -> Result<Lit, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Word(w)) => parse_word_literal(&w),
            _ => {
                self.pos -= 1;
                Err(format!("unexpected token: '{}'", self.describe_next()))
            }
        }
    }
}

fn is_reserved(w: &str) -> bool {
    [
        "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "ORDER", "BY", "LIMIT", "IN", "LIKE",
        "NULL", "TRUE", "FALSE",
    ]
    .iter()
    .any(|k| k.eq_ignore_ascii_case(w))
}

fn parse_word_literal(w: &str) -> Result<Lit, String> {
    if w.eq_ignore_ascii_case("null") {
        return Ok(Lit::Null);
    }
    if w.eq_ignore_ascii_case("true") {
        return Ok(Lit::Bool(true));
    }
    if w.eq_ignore_ascii_case("false") {
        return Ok(Lit::Bool(false));
    }
    let is_date = w.len() == 10
        && w.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date {
        return Ok(Lit::Date(w.to_owned()));
    }
    if w.len() > 10 && w.as_bytes().get(10) == Some(&b'T') {
        return parse_datetime(w)
            .map(Lit::DateTime)
            .ok_or_else(|| format!("invalid date/time: {w}"));
    }
    w.parse::<f64>()
        .map(Lit::Num)
        .map_err(|_| format!("unexpected token: '{w}'"))
}

/// Parses `2026-12-03T07:00:00Z`, `...T07:00:00.123+01:00` or Salesforce's own
/// `2026-12-03T07:00:00.000+0000` into milliseconds since the Unix epoch.
pub(crate) fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    // Salesforce writes `+0000`; RFC 3339 wants `+00:00`.
    let fixed;
    let s = match s.len().checked_sub(5).map(|i| s.split_at(i)) {
        Some((head, tail))
            if (tail.starts_with('+') || tail.starts_with('-'))
                && tail[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            fixed = format!("{head}{}:{}", &tail[..3], &tail[3..]);
            fixed.as_str()
        }
        _ => s,
    };
    let nanos = super::super::common::parse_rfc3339(s)?;
    i64::try_from(nanos / 1_000_000).ok()
}

/// Parses a SOQL query.
pub(crate) fn parse(q: &str) -> Result<Query, String> {
    let toks = tokenize(q)?;
    Parser { toks, pos: 0 }.query()
}

impl Query {
    /// Rewrites every field name with `resolve` (e.g. to the canonical spelling); the first name it
    /// rejects is returned as the error.
    pub fn resolve_fields(
        &mut self,
        resolve: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        for f in &mut self.fields {
            *f = resolve(f).ok_or_else(|| f.clone())?;
        }
        for o in &mut self.order {
            o.field = resolve(&o.field).ok_or_else(|| o.field.clone())?;
        }
        if let Some(e) = &mut self.filter {
            e.resolve_fields(resolve)?;
        }
        Ok(())
    }
}

impl Expr {
    fn resolve_fields(&mut self, resolve: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
        match self {
            Expr::And(v) | Expr::Or(v) => v.iter_mut().try_for_each(|e| e.resolve_fields(resolve)),
            Expr::Not(e) => e.resolve_fields(resolve),
            Expr::Cmp { field, .. } | Expr::In { field, .. } => {
                *field = resolve(field).ok_or_else(|| field.clone())?;
                Ok(())
            }
        }
    }

    /// Evaluates the condition; `get` returns a field's value (`Null` when unset).
    pub fn eval(&self, get: &dyn Fn(&str) -> Value) -> bool {
        match self {
            Expr::And(v) => v.iter().all(|e| e.eval(get)),
            Expr::Or(v) => v.iter().any(|e| e.eval(get)),
            Expr::Not(e) => !e.eval(get),
            Expr::Cmp { field, op, value } => compare(&get(field), *op, value),
            Expr::In {
                field,
                values,
                negated,
            } => {
                let v = get(field);
                values.iter().any(|lit| compare(&v, Op::Eq, lit)) != *negated
            }
        }
    }
}

fn compare(v: &Value, op: Op, lit: &Lit) -> bool {
    if let Lit::Null = lit {
        return match op {
            Op::Eq => v.is_null(),
            Op::Ne => !v.is_null(),
            _ => false,
        };
    }
    if v.is_null() {
        return op == Op::Ne;
    }
    let ord = match (lit, v) {
        (Lit::Bool(b), Value::Bool(x)) => x.cmp(b),
        (Lit::Num(n), Value::Number(x)) => match x.as_f64().and_then(|x| x.partial_cmp(n)) {
            Some(o) => o,
            None => return false,
        },
        (Lit::DateTime(ms), Value::String(s)) => match parse_datetime(s) {
            Some(x) => x.cmp(ms),
            None => return false,
        },
        (Lit::Date(d), Value::String(s)) => s.get(..10).unwrap_or(s).cmp(d.as_str()),
        (Lit::Str(p), Value::String(s)) if op == Op::Like => {
            return like(&s.to_lowercase(), &p.to_lowercase());
        }
        (Lit::Str(p), Value::String(s)) => s.to_lowercase().cmp(&p.to_lowercase()),
        _ => return false,
    };
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Like => false,
    }
}

/// SOQL `LIKE`: `%` = any run, `_` = one character.
fn like(s: &str, pattern: &str) -> bool {
    fn go(s: &[char], p: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('%') => (0..=s.len()).any(|i| go(&s[i..], &p[1..])),
            Some('_') => !s.is_empty() && go(&s[1..], &p[1..]),
            Some(c) => s.first() == Some(c) && go(&s[1..], &p[1..]),
        }
    }
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    go(&s, &p)
}

/// Orders two field values the way `ORDER BY` does (datetimes by instant, strings
/// case-insensitively); `None` is returned when either is null.
pub(crate) fn order_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => match (parse_datetime(x), parse_datetime(y)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        },
        _ => Some(Ordering::Equal),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_connector_queries() {
        let q = parse(
            "SELECT Id, StageName FROM Opportunity WHERE Partner_Center_Referral_Id__c != null \
             AND SystemModstamp >= 2026-11-30T10:00:00Z AND SystemModstamp < 2026-11-30T10:15:00.000Z \
             ORDER BY SystemModstamp, Id LIMIT 200",
        )
        .expect("parse");
        assert_eq!(q.fields, ["Id", "StageName"]);
        assert_eq!(q.object, "Opportunity");
        assert_eq!(q.limit, Some(200));
        assert_eq!(q.order.len(), 2);
        assert!(!q.order[0].desc);
        let Some(Expr::And(terms)) = &q.filter else {
            panic!("expected AND, got {:?}", q.filter)
        };
        assert_eq!(terms.len(), 3);
        assert_eq!(
            terms[1],
            Expr::Cmp {
                field: "SystemModstamp".into(),
                op: Op::Ge,
                value: Lit::DateTime(parse_datetime("2026-11-30T10:00:00Z").expect("dt")),
            }
        );

        let q = parse(
            "select ContactId, IsPrimary from OpportunityContactRole where OpportunityId = '006x'",
        )
        .expect("lower-case keywords");
        assert_eq!(q.object, "OpportunityContactRole");
    }

    #[test]
    fn rejects_what_soql_rejects() {
        for bad in [
            "",
            "SELECT FROM Lead",
            "SELECT Id Lead",
            "SELECT Id FROM Lead WHERE",
            "SELECT Id FROM Lead WHERE Name = 'x' AND City = 'y' OR State = 'z'",
            "SELECT Id FROM Lead WHERE (Name = 'x'",
            "SELECT Id FROM Lead WHERE Name = 'x",
            "SELECT Id FROM Lead LIMIT ten",
            "SELECT Id FROM Lead ORDER Id",
            "SELECT Id FROM Lead GROUP BY Id",
            "SELECT Id FROM Lead WHERE SystemModstamp > 2026-13-01T00:00:00Z",
            "SELECT Id FROM Lead WHERE Name LIKE 3",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn evaluates_conditions() {
        let rec = json!({
            "Name": "Contoso", "IsActive": true, "Amount": 10.5, "Ref__c": null,
            "SystemModstamp": "2026-12-03T07:00:00.000+0000", "CloseDate": "2026-12-31",
        });
        let get = |f: &str| rec.get(f).cloned().unwrap_or(Value::Null);
        let cases = [
            ("Name = 'contoso'", true),
            ("Name != 'Contoso'", false),
            ("Name LIKE 'Cont%'", true),
            ("Name LIKE 'C_n%o'", true),
            ("IsActive = true", true),
            ("IsActive = false", false),
            ("Amount > 10", true),
            ("Amount <= 10", false),
            ("Ref__c = null", true),
            ("Ref__c != null", false),
            ("Ref__c = 'x'", false),
            ("Ref__c != 'x'", true),
            ("SystemModstamp >= 2026-12-03T07:00:00Z", true),
            ("SystemModstamp > 2026-12-03T08:00:00+01:00", false),
            ("SystemModstamp < 2026-12-03T07:00:00.001Z", true),
            ("CloseDate = 2026-12-31", true),
            ("CloseDate < 2026-12-01", false),
            ("Name IN ('a', 'CONTOSO')", true),
            ("Name NOT IN ('a', 'CONTOSO')", false),
            ("(Name = 'a' OR IsActive = true) AND Amount > 1", true),
            ("Name = 'a' OR (IsActive = true AND Amount > 100)", false),
            ("NOT Name = 'a'", true),
        ];
        for (cond, want) in cases {
            let q = parse(&format!("SELECT Id FROM X WHERE {cond}")).expect(cond);
            let got = q.filter.as_ref().expect("filter").eval(&get);
            assert_eq!(got, want, "{cond}");
        }
    }

    #[test]
    fn salesforce_datetimes_parse() {
        let a = parse_datetime("2026-12-03T07:00:00.000+0000").expect("sf format");
        let b = parse_datetime("2026-12-03T08:00:00+01:00").expect("rfc 3339");
        assert_eq!(a, b);
        assert_eq!(parse_datetime("2026-12-03T07:00:00.250Z"), Some(a + 250));
        assert!(parse_datetime("2026-12-03").is_none());
    }

    #[test]
    fn orders_values() {
        let a = json!("2026-12-03T07:00:00.000+0000");
        let b = json!("2026-12-03T06:59:59.999-0100");
        assert_eq!(order_values(&a, &b), Some(Ordering::Less));
        assert_eq!(
            order_values(&json!("b"), &json!("A")),
            Some(Ordering::Greater)
        );
        assert_eq!(order_values(&json!(1), &json!(2)), Some(Ordering::Less));
        assert_eq!(order_values(&Value::Null, &json!(2)), None);
    }
}
