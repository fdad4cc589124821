require "imap4flags";
setflag "\\Flagged $a $b";
if header :contains "subject" "test" { removeflag "$a"; }
addflag "\\Seen";
