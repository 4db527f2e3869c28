//! The role table (issue 15 §1, DESIGN §3): every action × every principal, on both stores,
//! through the services every surface calls (the native API, the Venice and aiXplain
//! routes, the CLI and the console all reach the rules through `keys::Caller`).
//!
//! Principals: a workspace's owner, admin and member (console users), an admin key of the
//! `default` workspace (the operator), an admin key of the workspace itself (acts as its
//! admin), and an admin key of a third workspace (sees nothing here: "not found").
//! Each case runs on a fresh workspace, so an allowed deletion does not disturb the next.

use keygate::{
    keys::{input::KeyPatch, input::NewKey, Caller, KeyError, KeyKind},
    store::{AuditEvent, Member, Page, Role, Workspace},
    workspaces::{AuditQuery, NewMember, NewWorkspace, WorkspacePatch},
};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{both_backends, spawn_app, Backend, TestApp};

both_backends!(every_action_by_every_role);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Done.
    Ok,
    /// 403: the caller sees the workspace but lacks the role.
    Refused,
    /// 404: the workspace is outside the caller's reach.
    Hidden,
}
use Outcome::{Hidden as H, Ok as Y, Refused as R};

#[derive(Debug, Clone, Copy)]
enum Principal {
    Owner,
    Admin,
    Member,
    Operator,
    WorkspaceAdminKey,
    OtherWorkspaceAdminKey,
}

const PRINCIPALS: [Principal; 6] = [
    Principal::Owner,
    Principal::Admin,
    Principal::Member,
    Principal::Operator,
    Principal::WorkspaceAdminKey,
    Principal::OtherWorkspaceAdminKey,
];

#[derive(Debug, Clone, Copy)]
enum Action {
    CreateInferenceKey,
    CreateKeyWithLimits,
    CreateAdminKey,
    ListKeys,
    RenameOwnKey,
    RenameOthersKey,
    SetLimitsOnOwnKey,
    RotateOwnKey,
    RotateOthersKey,
    RevokeOwnKey,
    RevokeOthersKey,
    ReadWorkspace,
    RenameWorkspace,
    SetWebhook,
    ChangeCredits,
    ChangeKeyCap,
    DeleteWorkspace,
    ListMembers,
    AddMember,
    AddOwner,
    ChangeMemberRole,
    RemoveMember,
    ReadAuditLog,
    CreateWorkspace,
}

/// Expected outcome per principal, in `PRINCIPALS` order:
/// owner, admin, member, operator, the workspace's admin key, another workspace's admin key.
const TABLE: &[(Action, [Outcome; 6])] = &[
    (Action::CreateInferenceKey, [Y, Y, Y, Y, Y, H]),
    (Action::CreateKeyWithLimits, [Y, Y, R, Y, Y, H]),
    (Action::CreateAdminKey, [Y, Y, R, Y, Y, H]),
    (Action::ListKeys, [Y, Y, Y, Y, Y, H]),
    (Action::RenameOwnKey, [Y, Y, Y, Y, Y, H]),
    (Action::RenameOthersKey, [Y, Y, R, Y, Y, H]),
    (Action::SetLimitsOnOwnKey, [Y, Y, R, Y, Y, H]),
    (Action::RotateOwnKey, [Y, Y, Y, Y, Y, H]),
    (Action::RotateOthersKey, [Y, Y, R, Y, Y, H]),
    (Action::RevokeOwnKey, [Y, Y, Y, Y, Y, H]),
    (Action::RevokeOthersKey, [Y, Y, R, Y, Y, H]),
    (Action::ReadWorkspace, [Y, Y, Y, Y, Y, H]),
    (Action::RenameWorkspace, [Y, Y, R, Y, Y, H]),
    (Action::SetWebhook, [Y, Y, R, Y, Y, H]),
    (Action::ChangeCredits, [Y, R, R, Y, R, H]),
    (Action::ChangeKeyCap, [Y, R, R, Y, R, H]),
    (Action::DeleteWorkspace, [Y, R, R, Y, R, H]),
    (Action::ListMembers, [Y, Y, R, Y, Y, H]),
    (Action::AddMember, [Y, Y, R, Y, Y, H]),
    (Action::AddOwner, [Y, R, R, Y, R, H]),
    (Action::ChangeMemberRole, [Y, Y, R, Y, Y, H]),
    (Action::RemoveMember, [Y, Y, R, Y, Y, H]),
    (Action::ReadAuditLog, [Y, Y, R, Y, Y, H]),
    // Creating a workspace is not about this one: only the operator may; anyone else is
    // refused (there is nothing to hide).
    (Action::CreateWorkspace, [R, R, R, Y, R, R]),
];

/// One case's world: a fresh workspace with an owner, an admin and a member.
struct Case {
    workspace: Workspace,
    members: Vec<Member>,
    operator: Caller,
    other: Caller,
}

async fn case(app: &TestApp, other: &Caller) -> Case {
    let now = keygate::clock::now();
    let workspace = Workspace {
        id: Uuid::now_v7(),
        name: format!("ws {}", Uuid::now_v7()),
        key_cap: None,
        credits_usd: None,
        webhook_url: None,
        webhook_secret: None,
        created_at: now,
        updated_at: now,
    };
    let event = |action: &str| AuditEvent {
        id: Uuid::now_v7(),
        workspace_id: workspace.id,
        actor: "test".into(),
        action: action.into(),
        target: "test".into(),
        at: now,
        source: None,
        details: json!({}),
    };
    app.store()
        .create_workspace(&workspace, &event("workspace.create"))
        .await
        .unwrap();
    let mut members = Vec::new();
    for (name, role) in [
        ("olive", Role::Owner),
        ("adam", Role::Admin),
        ("mo", Role::Member),
    ] {
        let member = Member {
            id: Uuid::now_v7(),
            workspace_id: workspace.id,
            username: name.into(),
            role,
            // Signing in is not what this table tests; no argon2 needed.
            password_hash: "$argon2id$v=19$m=7168,t=5,p=1$c2FsdA$aGFzaA".into(),
            created_at: now,
            updated_at: now,
        };
        app.store()
            .create_member(&member, &event("member.create"))
            .await
            .unwrap();
        members.push(member);
    }
    let operator_key = app
        .store()
        .find_key(app.admin_key_id)
        .await
        .expect("the bootstrap key");
    Case {
        workspace,
        members,
        operator: Caller::for_admin_key(&operator_key, None),
        other: other.clone(),
    }
}

impl Case {
    async fn caller(&self, app: &TestApp, principal: Principal) -> Caller {
        match principal {
            Principal::Owner => Caller::for_member(&self.members[0], None),
            Principal::Admin => Caller::for_member(&self.members[1], None),
            Principal::Member => Caller::for_member(&self.members[2], None),
            Principal::Operator => self.operator.clone(),
            Principal::WorkspaceAdminKey => {
                let key = self.key_by(app, &self.operator, KeyKind::Admin).await;
                Caller::for_admin_key(&key, None)
            }
            Principal::OtherWorkspaceAdminKey => self.other.clone(),
        }
    }

    /// A key of this workspace made by `by` (the operator when `by` cannot make one).
    async fn key_by(&self, app: &TestApp, by: &Caller, kind: KeyKind) -> keygate::keys::ApiKey {
        let new = NewKey {
            name: "fixture".into(),
            kind: Some(kind),
            workspace_id: Some(self.workspace.id),
            ..NewKey::default()
        };
        match app.state.keys.create(by, new.clone()).await {
            Ok(created) => created.key,
            Err(_) => {
                app.state
                    .keys
                    .create(&self.operator, new)
                    .await
                    .unwrap()
                    .key
            }
        }
    }
}

async fn run(app: &TestApp, case: &Case, caller: &Caller, action: Action) -> Result<(), KeyError> {
    let ws = case.workspace.id;
    let keys = &app.state.keys;
    let new_key = |kind: KeyKind| NewKey {
        name: "made".into(),
        kind: Some(kind),
        workspace_id: Some(ws),
        ..NewKey::default()
    };
    let rename = || KeyPatch {
        name: Some("renamed".into()),
        ..KeyPatch::default()
    };
    match action {
        Action::CreateInferenceKey => keys
            .create(caller, new_key(KeyKind::Inference))
            .await
            .map(drop),
        Action::CreateKeyWithLimits => {
            let mut new = new_key(KeyKind::Inference);
            new.limits = Some(keygate::keys::model::Limits {
                rpm: Some(5),
                ..Default::default()
            });
            keys.create(caller, new).await.map(drop)
        }
        Action::CreateAdminKey => keys.create(caller, new_key(KeyKind::Admin)).await.map(drop),
        Action::ListKeys => keys
            .list(caller, Some(ws), Page { page: 1, limit: 10 })
            .await
            .map(drop),
        Action::RenameOwnKey
        | Action::SetLimitsOnOwnKey
        | Action::RotateOwnKey
        | Action::RevokeOwnKey => {
            let own = case.key_by(app, caller, KeyKind::Inference).await;
            match action {
                Action::RenameOwnKey => keys.update(caller, own.id, rename()).await.map(drop),
                Action::SetLimitsOnOwnKey => {
                    let patch = KeyPatch {
                        limits: Some(Some(keygate::keys::model::Limits {
                            rpm: Some(1),
                            ..Default::default()
                        })),
                        ..KeyPatch::default()
                    };
                    keys.update(caller, own.id, patch).await.map(drop)
                }
                Action::RotateOwnKey => keys.rotate(caller, own.id, 0).await.map(drop),
                _ => keys.revoke(caller, own.id).await.map(drop),
            }
        }
        Action::RenameOthersKey | Action::RotateOthersKey | Action::RevokeOthersKey => {
            let theirs = case.key_by(app, &case.operator, KeyKind::Inference).await;
            match action {
                Action::RenameOthersKey => keys.update(caller, theirs.id, rename()).await.map(drop),
                Action::RotateOthersKey => keys.rotate(caller, theirs.id, 0).await.map(drop),
                _ => keys.revoke(caller, theirs.id).await.map(drop),
            }
        }
        Action::ReadWorkspace => app.state.workspaces.get(caller, ws).await.map(drop),
        Action::RenameWorkspace
        | Action::SetWebhook
        | Action::ChangeCredits
        | Action::ChangeKeyCap => {
            let mut patch = WorkspacePatch::default();
            match action {
                Action::RenameWorkspace => patch.name = Some(format!("renamed {}", Uuid::now_v7())),
                Action::SetWebhook => {
                    patch.webhook_url = Some(Some("https://93.184.216.34/hook".into()))
                }
                Action::ChangeCredits => {
                    patch.credits_usd = Some(Some(keygate::workspaces::input::Usd(
                        rust_decimal::Decimal::from(5),
                    )))
                }
                _ => patch.key_cap = Some(Some(3)),
            }
            app.state
                .workspaces
                .update(caller, ws, patch)
                .await
                .map(drop)
        }
        Action::DeleteWorkspace => app.state.workspaces.delete(caller, ws).await,
        Action::ListMembers => app.state.members.list(caller, ws).await.map(drop),
        Action::AddMember | Action::AddOwner => {
            let role = match action {
                Action::AddOwner => Role::Owner,
                _ => Role::Member,
            };
            let new = NewMember {
                username: "newcomer".into(),
                role,
                password: "long enough password".into(),
            };
            app.state.members.add(caller, ws, new).await.map(drop)
        }
        Action::ChangeMemberRole => {
            let patch = keygate::workspaces::MemberPatch {
                role: Some(Role::Admin),
                password: None,
            };
            app.state
                .members
                .update(caller, ws, "mo", patch)
                .await
                .map(drop)
        }
        Action::RemoveMember => app.state.members.remove(caller, ws, "mo").await,
        Action::ReadAuditLog => {
            let query = AuditQuery {
                workspace_id: Some(ws),
                ..AuditQuery::default()
            };
            app.state
                .workspaces
                .audit_events(caller, query, Page { page: 1, limit: 10 })
                .await
                .map(drop)
        }
        Action::CreateWorkspace => {
            let new = NewWorkspace {
                name: format!("new {}", Uuid::now_v7()),
                ..NewWorkspace::default()
            };
            app.state.workspaces.create(caller, new).await.map(drop)
        }
    }
}

async fn every_action_by_every_role(backend: Backend) {
    // Arrange: an admin key of a third workspace (the "other" principal).
    let app = spawn_app(backend).await;
    let (_, other_key_id, _) = app.create_workspace_with_admin("third", None).await;
    let other_key = app.store().find_key(other_key_id).await.unwrap();
    let other = Caller::for_admin_key(&other_key, None);

    let mut mismatches = Vec::new();
    for (action, expected) in TABLE {
        for (principal, want) in PRINCIPALS.iter().zip(expected) {
            let case = case(&app, &other).await;
            let caller = case.caller(&app, *principal).await;

            // Act
            let result = run(&app, &case, &caller, *action).await;

            // Assert
            let got = match &result {
                Ok(()) => Outcome::Ok,
                Err(KeyError::Forbidden(_)) => Outcome::Refused,
                Err(
                    KeyError::WorkspaceNotFound | KeyError::NotFound | KeyError::MemberNotFound,
                ) => Outcome::Hidden,
                Err(other) => panic!("{action:?} by {principal:?}: unexpected {other:?}"),
            };
            if got != *want {
                mismatches.push(format!(
                    "{action:?} by {principal:?}: expected {want:?}, got {got:?} ({result:?})"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
