require ["variables", "fileinto", "imap4flags"];
if header :matches "subject" "* *" { addflag "w-${1}"; }
if address :matches :localpart "from" "*" { set "who" "${1}"; addflag "from-${who}"; }
