//! Automatic certificates (`[acme]`): an ACME account and orders through `instant-acme`,
//! TLS-ALPN-01 answered on the HTTPS port by the listeners' own `CertStore`, and renewal
//! `acme.renew_before_days` before expiry. The new certificate is swapped into every TLS
//! listener (HTTPS, WSS, TURNS) without a restart and kept in `server.state_dir`
//! (`acme-cert.pem`, `acme-key.pem`, `acme-account.json`, mode 0600).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{AcmeConfig, Config};
use crate::tls::{self, CertOrigin, TlsMaterial};

const ACCOUNT_FILE: &str = "acme-account.json";

/// Retries after a failed order: first soon, then backing off to this.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// How long the CA gets to validate and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(90));

/// Keeps a valid certificate for `config.acme.domains` in `tls` until `shutdown`.
pub async fn maintain(config: Config, tls: Arc<TlsMaterial>, shutdown: CancellationToken) {
    let a = &config.acme;
    let mut retry = FIRST_RETRY;
    loop {
        let now = time::OffsetDateTime::now_utc();
        let wait = match tls::acme_stored(&config, now)
            .as_ref()
            .and_then(tls::not_after)
        {
            Some(end) => {
                let renew_at = end - time::Duration::days(a.renew_before_days as i64);
                Duration::try_from(renew_at - now).unwrap_or(Duration::ZERO)
            }
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            info!(domains = ?a.domains, renew_in_h = wait.as_secs() / 3600, "ACME certificate valid");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = obtain(&config, &tls) => r,
        };
        tls.clear_challenges();
        match result {
            Ok(()) => retry = FIRST_RETRY,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    retry_in_s = retry.as_secs(),
                    "ACME certificate not obtained"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// One order: account, TLS-ALPN-01 for every domain, CSR, certificate; then it is served.
async fn obtain(config: &Config, tls: &TlsMaterial) -> anyhow::Result<()> {
    let a = &config.acme;
    let dir = &config.server.state_dir;
    let account = account(a, dir).await?;
    let identifiers: Vec<Identifier> = a.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("placing the order")?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("reading an authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization is {other:?}"),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .context("the CA offers no tls-alpn-01 challenge")?;
        let name = challenge.identifier().to_string();
        let answer = tls::acme_challenge(&name, challenge.key_authorization().digest().as_ref())?;
        tls.add_challenge(&name, &answer);
        challenge
            .set_ready()
            .await
            .context("answering the challenge")?;
    }
    let status = order
        .poll_ready(&POLL)
        .await
        .context("waiting for validation")?;
    if status != OrderStatus::Ready {
        bail!(
            "the CA did not validate {:?} (order {status:?}): each name must resolve to this host \
             and reach https.listen on port 443",
            a.domains
        );
    }
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(a.domains.clone())?.serialize_request(&key)?;
    order
        .finalize_csr(csr.der())
        .await
        .context("finalizing the order")?;
    let chain = order
        .poll_certificate(&POLL)
        .await
        .context("downloading the certificate")?;
    let cert_path = dir.join(tls::ACME_CERT);
    let loaded = tls::from_pem(
        &chain,
        &key.serialize_pem(),
        &cert_path,
        CertOrigin::Acme(cert_path.clone()),
    )?;
    tls::write_private(&dir.join(tls::ACME_KEY), key.serialize_pem().as_bytes())
        .with_context(|| format!("storing the key in {} (server.state_dir)", dir.display()))?;
    tls::write_private(&cert_path, chain.as_bytes()).with_context(|| {
        format!(
            "storing the certificate in {} (server.state_dir)",
            dir.display()
        )
    })?;
    tls.replace(&loaded);
    info!(
        domains = ?a.domains,
        fingerprint = %loaded.fingerprint,
        not_after = %tls::not_after(&loaded).map(|t| t.to_string()).unwrap_or_default(),
        "ACME certificate issued, now serving it"
    );
    Ok(())
}

/// The account stored in the state directory, or a new one (then stored).
async fn account(a: &AcmeConfig, dir: &Path) -> anyhow::Result<Account> {
    let builder = || match &a.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("reading acme.directory_ca {}", ca.display())),
        None => Account::builder().context("setting up the HTTPS client"),
    };
    let path = dir.join(ACCOUNT_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
    {
        return builder()?
            .from_credentials(credentials)
            .await
            .with_context(|| format!("loading the ACME account {}", path.display()));
    }
    let contact: Vec<&str> = a.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            a.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", a.directory))?;
    std::fs::create_dir_all(dir)?;
    tls::write_private(&path, serde_json::to_string(&credentials)?.as_bytes())
        .with_context(|| format!("storing the ACME account in {}", path.display()))?;
    info!(directory = %a.directory, "ACME account created");
    Ok(account)
}
