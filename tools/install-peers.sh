#!/bin/sh
# Installs the Debian packages that the integration tests talk to, when any is missing.
# Non-interactive; waits for the dpkg lock instead of failing; starts no system daemons.
set -eu

missing=""
for prog in slapd:slapd slapadd:slapd ldapsearch:ldap-utils swaks:swaks smtp-source:postfix \
            smtp-sink:postfix postfix:postfix dovecot:dovecot-core dnsmasq:dnsmasq-base \
            dig:bind9-dnsutils openssl:openssl fetchmail:fetchmail; do
    name=${prog%%:*}
    command -v "$name" >/dev/null 2>&1 || [ -x "/usr/sbin/$name" ] || missing="$missing ${prog#*:}"
done
# Perl modules that swaks needs for STARTTLS and SASL, and Dovecot's POP3, LMTP and IMAP services.
for pkg in libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl dovecot-pop3d dovecot-lmtpd \
           dovecot-imapd; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
echo "install-peers: installing$missing"
# Keep package scripts from starting system daemons (slapd, dovecot, postfix) on this machine.
created_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
printf '%s\n' \
    'postfix postfix/main_mailer_type select No configuration' \
    'postfix postfix/mailname string localhost' \
    'slapd slapd/no_configuration boolean true' | $SUDO debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
# shellcheck disable=SC2086
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing
[ -n "$created_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit 0
