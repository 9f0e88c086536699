//! Txn: compares, branches, nesting and the operation limits.

use super::*;

pub(crate) async fn txn_compares(c: &mut Client) {
    let r0 = current_rev(c).await;
    put(c, "txn/a", "1").await;
    put(c, "txn/a", "2").await;
    put(c, "txn/b", "x").await;
    // txn/a: value "2", create r0+1, mod r0+2, version 2, lease 0; txn/b version 1.
    use CompareOp::{Equal as Eq, Greater as Gt, Less as Lt, NotEqual as Ne};
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::version("txn/a", Eq, 2), true),
        (Compare::version("txn/a", Eq, 1), false),
        (Compare::version("txn/a", Gt, 1), true),
        (Compare::version("txn/a", Gt, 2), false),
        (Compare::version("txn/a", Lt, 3), true),
        (Compare::version("txn/a", Lt, 2), false),
        (Compare::version("txn/a", Ne, 2), false),
        (Compare::version("txn/a", Ne, 0), true),
        (Compare::create_revision("txn/a", Eq, r0 + 1), true),
        (Compare::create_revision("txn/a", Gt, r0 + 1), false),
        (Compare::create_revision("txn/a", Gt, r0), true),
        (Compare::create_revision("txn/a", Lt, r0 + 2), true),
        (Compare::create_revision("txn/a", Ne, r0 + 1), false),
        (Compare::mod_revision("txn/a", Eq, r0 + 2), true),
        (Compare::mod_revision("txn/a", Eq, r0 + 1), false),
        (Compare::mod_revision("txn/a", Gt, r0 + 1), true),
        (Compare::mod_revision("txn/a", Lt, r0 + 2), false),
        (Compare::mod_revision("txn/a", Lt, r0 + 3), true),
        (Compare::mod_revision("txn/a", Ne, r0 + 3), true),
        (Compare::value("txn/a", Eq, "2"), true),
        (Compare::value("txn/a", Eq, "1"), false),
        (Compare::value("txn/a", Gt, "1"), true),
        (Compare::value("txn/a", Gt, "2"), false),
        (Compare::value("txn/a", Lt, "3"), true),
        (Compare::value("txn/a", Lt, "10"), false),
        (Compare::value("txn/a", Ne, "2"), false),
        (Compare::value("txn/a", Ne, "22"), true),
        (Compare::lease("txn/a", Eq, 0), true),
        (Compare::lease("txn/a", Gt, 0), false),
        (Compare::lease("txn/a", Lt, 1), true),
        (Compare::lease("txn/a", Ne, 5), true),
        (Compare::lease("txn/a", Ne, 0), false),
        // A missing key compares as zeros, except that its value never compares.
        (Compare::version("txn/none", Eq, 0), true),
        (Compare::version("txn/none", Gt, 0), false),
        (Compare::create_revision("txn/none", Eq, 0), true),
        (Compare::mod_revision("txn/none", Lt, 1), true),
        (Compare::lease("txn/none", Eq, 0), true),
        (Compare::value("txn/none", Eq, ""), false),
        (Compare::value("txn/none", Ne, "x"), false),
        (Compare::value("txn/none", Lt, "x"), false),
        // Over a range: every key must satisfy it.
        (Compare::version("txn/a", Gt, 0).with_range("txn/c"), true),
        (Compare::version("txn/", Eq, 2).with_prefix(), false),
        (Compare::version("txn/", Ne, 3).with_prefix(), true),
        (Compare::create_revision("txn/", Gt, r0).with_prefix(), true),
        (
            Compare::mod_revision("txn/", Lt, r0 + 3).with_prefix(),
            false,
        ),
        (Compare::value("txn/", Ne, "zzz").with_prefix(), true),
        (Compare::value("txn/", Eq, "2").with_prefix(), false),
        // An empty range compares as one missing key.
        (Compare::version("txn/q", Eq, 0).with_range("txn/r"), true),
        (Compare::version("txn/q", Eq, 5).with_range("txn/r"), false),
        (Compare::value("txn/q", Eq, "").with_range("txn/r"), false),
        (Compare::value("txn/q", Ne, "5").with_range("txn/r"), false),
    ];
    for (i, (cmp, want)) in cases.into_iter().enumerate() {
        let dbg = format!("{cmp:?}");
        assert_eq!(holds(c, vec![cmp]).await, want, "case {i}: {dbg}");
    }
    // Several compares must all hold.
    assert!(
        holds(
            c,
            vec![
                Compare::version("txn/a", Eq, 2),
                Compare::value("txn/b", Eq, "x")
            ]
        )
        .await
    );
    assert!(
        !holds(
            c,
            vec![
                Compare::version("txn/a", Eq, 2),
                Compare::value("txn/b", Eq, "y")
            ]
        )
        .await
    );
    assert_eq!(current_rev(c).await, r0 + 3, "compares alone write nothing");

    // An empty compare key is refused.
    assert_status(
        c.txn(Txn::new().when(vec![Compare::version("", Eq, 0)]))
            .await,
        Code::InvalidArgument,
        KEY_NOT_PROVIDED,
    );
}

pub(crate) async fn txn_branches(c: &mut Client) {
    use CompareOp::Equal as Eq;
    let r0 = current_rev(c).await;
    put(c, "br/a", "2").await; // r0 + 1
    put(c, "br/b", "x").await; // r0 + 2

    // Success: put (prev_kv), get, delete (prev_kv), nested txn; one revision for all.
    let t = Txn::new()
        .when(vec![Compare::value("br/a", Eq, "2")])
        .and_then(vec![
            TxnOp::get("br/a", None),
            TxnOp::put("br/a", "3", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("br/a", None),
            TxnOp::delete("br/b", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::txn(
                Txn::new()
                    .when(vec![Compare::version("br/a", Eq, 2)])
                    .and_then(vec![TxnOp::put("br/c", "then", None)])
                    .or_else(vec![
                        TxnOp::put("br/c", "else", None),
                        TxnOp::get("br/", Some(GetOptions::new().with_prefix())),
                    ]),
            ),
        ])
        .or_else(vec![TxnOp::put("br/a", "fail", None)]);
    let r = c.txn(t).await.expect("txn");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 3);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 5);
    let TxnOpResponse::Get(g) = &ops[0] else {
        panic!("{:?}", ops[0])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "2", r0 + 1, r0 + 1, 1)]);
    assert_eq!(header(g.header()).revision(), r0 + 2);
    let TxnOpResponse::Put(p) = &ops[1] else {
        panic!("{:?}", ops[1])
    };
    assert_eq!(
        kv(p.prev_key().expect("prev kv")),
        expect("br/a", "2", r0 + 1, r0 + 1, 1)
    );
    assert_eq!(header(p.header()).revision(), r0 + 3);
    // A read after a write in the same txn sees it.
    let TxnOpResponse::Get(g) = &ops[2] else {
        panic!("{:?}", ops[2])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "3", r0 + 1, r0 + 3, 2)]);
    assert_eq!(header(g.header()).revision(), r0 + 3);
    let TxnOpResponse::Delete(d) = &ops[3] else {
        panic!("{:?}", ops[3])
    };
    assert_eq!(d.deleted(), 1);
    let prev: Vec<Kv> = d.prev_kvs().iter().map(kv).collect();
    assert_eq!(prev, vec![expect("br/b", "x", r0 + 2, r0 + 2, 1)]);
    assert_eq!(header(d.header()).revision(), r0 + 3);
    // Every compare, nested ones included, sees the store as it was before the txn:
    // br/a had version 1 then, so the nested txn takes its failure branch.
    let TxnOpResponse::Txn(n) = &ops[4] else {
        panic!("{:?}", ops[4])
    };
    assert!(!n.succeeded());
    // etcd leaves a nested txn's own header empty.
    let nh = header(n.header());
    assert_eq!(
        (
            nh.cluster_id(),
            nh.member_id(),
            nh.revision(),
            nh.raft_term()
        ),
        (0, 0, 0, 0)
    );
    let nested = n.op_responses();
    assert_eq!(nested.len(), 2);
    let TxnOpResponse::Put(p) = &nested[0] else {
        panic!("{:?}", nested[0])
    };
    assert!(p.prev_key().is_none());
    assert_eq!(header(p.header()).revision(), r0 + 3);
    let TxnOpResponse::Get(g) = &nested[1] else {
        panic!("{:?}", nested[1])
    };
    assert_eq!(
        kvs(g),
        vec![
            expect("br/a", "3", r0 + 1, r0 + 3, 2),
            expect("br/c", "else", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(header(g.header()).revision(), r0 + 3);
    let r = get(c, "br/", GetOptions::new().with_prefix()).await;
    assert_eq!(
        kvs(&r),
        vec![
            expect("br/a", "3", r0 + 1, r0 + 3, 2),
            expect("br/c", "else", r0 + 3, r0 + 3, 1),
        ]
    );
    assert_eq!(header(r.header()).revision(), r0 + 3);

    // Failure branch.
    let t = Txn::new()
        .when(vec![Compare::value("br/a", Eq, "nope")])
        .and_then(vec![TxnOp::put("br/a", "x", None)])
        .or_else(vec![
            TxnOp::put("br/d", "f", None),
            TxnOp::get(
                "br/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        ]);
    let r = c.txn(t).await.expect("txn");
    assert!(!r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    let ops = r.op_responses();
    assert_eq!(ops.len(), 2);
    let TxnOpResponse::Get(g) = &ops[1] else {
        panic!("{:?}", ops[1])
    };
    assert_eq!(keys(g), ["br/a", "br/c", "br/d"]);
    assert_eq!(g.count(), 3);

    // A failed compare with no failure ops, a read-only txn, an empty txn: no revision.
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::value("br/a", Eq, "nope")])
                .and_then(vec![TxnOp::put("br/a", "x", None)]),
        )
        .await
        .expect("txn");
    assert!(!r.succeeded());
    assert!(r.op_responses().is_empty());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    let r = c
        .txn(Txn::new().and_then(vec![
            TxnOp::get("br/a", None),
            TxnOp::get("br/a", Some(GetOptions::new().with_revision(r0 + 1))),
            TxnOp::get(
                "br/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        ]))
        .await
        .expect("read-only txn");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    let ops = r.op_responses();
    let TxnOpResponse::Get(g) = &ops[0] else {
        panic!("{:?}", ops[0])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "3", r0 + 1, r0 + 3, 2)]);
    assert_eq!(header(g.header()).revision(), r0 + 4);
    let TxnOpResponse::Get(g) = &ops[1] else {
        panic!("{:?}", ops[1])
    };
    assert_eq!(kvs(g), vec![expect("br/a", "2", r0 + 1, r0 + 1, 1)]);
    assert_eq!(header(g.header()).revision(), r0 + 4);
    let TxnOpResponse::Get(g) = &ops[2] else {
        panic!("{:?}", ops[2])
    };
    assert_eq!((g.kvs().len(), g.count()), (0, 3));
    let r = c.txn(Txn::new()).await.expect("empty txn");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 4);
    // A txn whose only delete finds nothing writes nothing.
    let r = c
        .txn(Txn::new().and_then(vec![TxnOp::delete("br/none", None)]))
        .await
        .expect("txn");
    assert_eq!(header(r.header()).revision(), r0 + 4);

    // Errors inside the branch taken; the branch not taken is not checked at apply.
    assert_status(
        c.txn(Txn::new().and_then(vec![TxnOp::put(
            "br/missing",
            "",
            Some(PutOptions::new().with_ignore_value()),
        )]))
        .await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert_status(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("br/e", "e", None),
            TxnOp::put("br/f", "f", Some(PutOptions::new().with_lease(0x77))),
        ]))
        .await,
        Code::NotFound,
        LEASE_NOT_FOUND,
    );
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::version("br/a", Eq, 2)])
                .and_then(vec![TxnOp::put("br/e", "e", None)])
                .or_else(vec![TxnOp::put(
                    "br/missing",
                    "",
                    Some(PutOptions::new().with_ignore_value()),
                )]),
        )
        .await
        .expect("txn with a bad op in the branch not taken");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 5);
    assert_status(
        c.txn(Txn::new().and_then(vec![
            TxnOp::put("br/e", "e", None),
            TxnOp::get("br/a", Some(GetOptions::new().with_revision(r0 + 1000))),
        ]))
        .await,
        Code::OutOfRange,
        FUTURE_REV,
    );
    // Each op's header carries the revision as of that op: a delete that finds nothing
    // before any write still reports the revision the txn started at.
    let r = c
        .txn(Txn::new().and_then(vec![
            TxnOp::delete("br/none", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::put("br/g", "g", None),
            TxnOp::delete("br/none", None),
        ]))
        .await
        .expect("txn");
    assert_eq!(header(r.header()).revision(), r0 + 6);
    let revs: Vec<(i64, i64)> = r
        .op_responses()
        .iter()
        .map(|op| match op {
            TxnOpResponse::Delete(d) => (header(d.header()).revision(), d.deleted()),
            TxnOpResponse::Put(p) => (header(p.header()).revision(), 1),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revs, [(r0 + 5, 0), (r0 + 6, 1), (r0 + 6, 0)]);
    // Validation covers both branches.
    for op in [
        TxnOp::put("", "v", None),
        TxnOp::get("", None),
        TxnOp::delete("", None),
        TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("", "v", None)])),
    ] {
        let dbg = format!("{op:?}");
        assert_eq!(
            status(c.txn(Txn::new().or_else(vec![op])).await),
            (Code::InvalidArgument, KEY_NOT_PROVIDED.to_string()),
            "{dbg}"
        );
    }
    assert_status(
        c.txn(Txn::new().or_else(vec![TxnOp::put(
            "br/a",
            "v",
            Some(PutOptions::new().with_ignore_value()),
        )]))
        .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        c.txn(Txn::new().or_else(vec![TxnOp::put(
            "br/a",
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(9)),
        )]))
        .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_eq!(current_rev(c).await, r0 + 6, "failed txns write nothing");
    let r = get(c, "br/f", GetOptions::new()).await;
    assert!(r.kvs().is_empty(), "a failed txn is all-or-nothing");
}

pub(crate) async fn txn_limits(c: &mut Client) {
    use CompareOp::Equal as Eq;
    let r0 = current_rev(c).await;
    // 128 operations per list by default.
    let r = c
        .txn(Txn::new().and_then(puts("lim/a", 128)))
        .await
        .expect("128 ops");
    assert_eq!(header(r.header()).revision(), r0 + 1);
    let r = get(
        c,
        "lim/a",
        GetOptions::new().with_prefix().with_count_only(),
    )
    .await;
    assert_eq!(r.count(), 128);
    assert_status(
        c.txn(Txn::new().and_then(puts("lim/b", 129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_status(
        c.txn(Txn::new().or_else(puts("lim/b", 129))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let cmps: Vec<Compare> = (0..129)
        .map(|i| Compare::version(format!("lim/c{i}"), Eq, 0))
        .collect();
    assert_status(
        c.txn(Txn::new().when(cmps)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let cmps: Vec<Compare> = (0..128)
        .map(|i| Compare::version(format!("lim/c{i}"), Eq, 0))
        .collect();
    let r = c
        .txn(
            Txn::new()
                .when(cmps)
                .and_then(puts("lim/d", 128))
                .or_else(puts("lim/e", 128)),
        )
        .await
        .expect("128 compares and 128 ops on each branch");
    assert!(r.succeeded());
    assert_eq!(header(r.header()).revision(), r0 + 2);
    // A nested txn gets what its parent's largest list left.
    let nested = |n: usize| TxnOp::txn(Txn::new().and_then(puts("lim/n", n)));
    assert_status(
        c.txn(Txn::new().and_then(vec![nested(128)])).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let r = c
        .txn(Txn::new().and_then(vec![nested(127)]))
        .await
        .expect("nested 127");
    assert_eq!(header(r.header()).revision(), r0 + 3);
    let mut ops = puts("lim/f", 63);
    ops.push(nested(65));
    assert_status(
        c.txn(Txn::new().and_then(ops)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let mut ops = puts("lim/f", 63);
    ops.push(nested(64));
    c.txn(Txn::new().and_then(ops)).await.expect("63 + 64");
    assert_eq!(current_rev(c).await, r0 + 4);

    // Duplicate keys: one key written twice on one branch, or put inside a deleted range.
    let dup = |ops: Vec<TxnOp>| Txn::new().and_then(ops);
    for (i, ops) in [
        vec![
            TxnOp::put("dup/k", "1", None),
            TxnOp::put("dup/k", "2", None),
        ],
        vec![TxnOp::put("dup/k", "1", None), TxnOp::delete("dup/k", None)],
        vec![TxnOp::delete("dup/k", None), TxnOp::put("dup/k", "1", None)],
        vec![
            TxnOp::delete("dup/a", Some(DeleteOptions::new().with_range("dup/z"))),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![
            TxnOp::delete("dup/", Some(DeleteOptions::new().with_prefix())),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![
            TxnOp::put("dup/k", "1", None),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::put("dup/k", "2", None)])),
        ],
        vec![
            TxnOp::txn(Txn::new().or_else(vec![TxnOp::put("dup/k", "2", None)])),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::delete("dup/k", None)])),
            TxnOp::put("dup/k", "1", None),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            status(c.txn(dup(ops)).await),
            (Code::InvalidArgument, DUPLICATE_KEY.to_string()),
            "duplicate case {i}"
        );
    }
    // Not duplicates: deletes may overlap, a put at a range's end, the two branches, the
    // two branches of a nested txn, gets anywhere.
    for (i, ops) in [
        vec![TxnOp::delete("dup/k", None), TxnOp::delete("dup/k", None)],
        vec![
            TxnOp::delete("dup/a", Some(DeleteOptions::new().with_range("dup/m"))),
            TxnOp::delete("dup/c", Some(DeleteOptions::new().with_range("dup/z"))),
        ],
        vec![
            TxnOp::delete("dup/a", Some(DeleteOptions::new().with_range("dup/k"))),
            TxnOp::put("dup/k", "1", None),
        ],
        vec![TxnOp::txn(
            Txn::new()
                .and_then(vec![TxnOp::put("dup/k", "1", None)])
                .or_else(vec![TxnOp::put("dup/k", "2", None)]),
        )],
        vec![
            TxnOp::put("dup/k", "1", None),
            TxnOp::get("dup/k", None),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::get("dup/k", None)])),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let r = c.txn(dup(ops)).await;
        assert!(r.is_ok(), "not a duplicate, case {i}: {r:?}");
    }
    let r = c
        .txn(
            Txn::new()
                .when(vec![Compare::version("dup/k", CompareOp::Greater, 0)])
                .and_then(vec![TxnOp::put("dup/k", "then", None)])
                .or_else(vec![TxnOp::put("dup/k", "else", None)]),
        )
        .await
        .expect("the same key on both branches");
    assert!(r.succeeded());
}
