require "imap4flags";
addflag "\\Seen";
addflag ["$Work", "Urgent"];
