require ["envelope", "imap4flags"];
if envelope :localpart :is "to" "carol" { addflag "mine"; }
if envelope :domain :is "to" "zzz.org" { addflag "zzz"; }
